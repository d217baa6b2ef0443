"""The Ray adapter around a Ray-free training loop: config in, `tune.report` + MLflow out."""
from contextlib import nullcontext
from pathlib import Path

import ray
import torch
from ray import tune

from sweeper.tracking import config_params, log_eval, trial_run_id
from trainables.metrics import extractor_by_name
from trainables.training.checkpoint import GRID_FILE
from trainables.training.gan import resolve_device


def run_trial(sampled: dict, *, train_fn, base, images, ref_stats, extractor, weights_path,
              tracking, cpus: float) -> None:
    """Ray Tune function trainable; `tune.with_parameters` supplies everything after `sampled`."""
    cfg = base.replace(**sampled).validate()
    torch.set_num_threads(max(1, int(cpus)))  # several trials share a machine; don't oversubscribe
    context = tune.get_context()
    run_id = trial_run_id(tracking, context.get_trial_id(), context.get_trial_name(), config_params(cfg))
    # Which machine a trial ran on (the latest node, when a retry moved it), for debugging a cluster sweep.
    tracking.client().set_tag(run_id, "sweeper.node_id", ray.get_runtime_context().get_node_id())

    def report(metrics: dict, directory) -> None:
        log_eval(tracking, run_id, metrics, Path(directory) / GRID_FILE if directory else None)
        checkpoint = tune.Checkpoint.from_directory(directory) if directory else None
        tune.report(metrics, checkpoint=checkpoint)

    features = extractor_by_name(extractor, resolve_device(cfg.device), weights_path=weights_path)
    checkpoint = tune.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint else nullcontext()) as restore_from:
        train_fn(cfg, images, report, extractor=features, ref_stats=ref_stats, restore_from=restore_from)
