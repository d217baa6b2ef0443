"""The Ray adapter around a Ray-free training loop: config in, `tune.report` + MLflow out."""
from contextlib import nullcontext
from pathlib import Path

import ray
import torch
from ray import tune

from sweeper.tracking import config_params, log_eval, trial_run_id
from trainables.training.checkpoint import GRID_FILE


def run_trial(sampled: dict, *, task, train_fn, base, shared: dict, tracking, cpus: float) -> None:
    """Ray Tune function trainable; `tune.with_parameters` supplies everything after `sampled`.
    `train_fn(cfg, report, restore_from=..., **task.trial_kwargs(cfg, shared))` trains."""
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

    kwargs = task.trial_kwargs(cfg, shared)
    checkpoint = tune.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint else nullcontext()) as restore_from:
        train_fn(cfg, report, restore_from=restore_from, **kwargs)
