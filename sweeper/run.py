"""`sweeper run`: prepare data and FID statistics once, run the Tuner, then summarise into MLflow."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
from ray import tune

from sweeper.outcomes import baseline, close_trial_runs, trial_table
from sweeper.refstats import reference_stats
from sweeper.registry import model_name, register_generator
from sweeper.spec import Sweep
from sweeper.tracking import SWEEPS_DIR, Tracking, child_runs, default_tracking_uri, open_sweep
from sweeper.trial import run_trial
from sweeper.tuner import build_tuner
from trainables.data import prepare
from trainables.metrics import load_extractor
from trainables.training.gan import resolve_device

log = logging.getLogger("sweeper")


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    sweep_name: str
    best_trial: str
    best_fid: float
    baseline_fid: float | None
    best_config: dict
    model_version: str
    tracking: Tracking
    table: pd.DataFrame


def run_sweep(sweep: Sweep, *, sweep_file: str, quick: bool) -> SweepSummary:
    cfg = sweep.config
    # Data and FID reference statistics: once per sweep, on the driver, before anything is logged.
    # Trials get the prepared uint8 array through Ray's object store (zero-copy); none decodes.
    prepared = prepare(cfg.data, cfg.resolution, seed=cfg.seed)
    print(prepared.summary(), flush=True)
    dataset = prepared.data
    extractor = load_extractor(resolve_device(cfg.device))
    ref_stats = reference_stats(dataset.images, dataset.fingerprint, extractor, cfg.ref_samples)

    # MLflow structure: the experiment and the sweep's parent run.
    tracking = open_sweep(sweep.name, default_tracking_uri(), extractor=extractor.name,
                          params=_sweep_params(sweep), tags={
                              "sweeper.sweep_file": sweep_file, "sweeper.quick": str(quick),
                              "sweeper.dataset_fingerprint": dataset.fingerprint,
                              "sweeper.dataset_cache_key": prepared.key})
    try:
        results = _fit(sweep, dataset, extractor, ref_stats, tracking)
        return _summarise(sweep, results, tracking)
    except BaseException:
        tracking.client().set_terminated(tracking.parent_run_id, status="FAILED")
        raise


def _fit(sweep, dataset, extractor, ref_stats, tracking):
    if not ray.is_initialized():
        # RAY_ADDRESS joins a cluster (`ray job submit` sets it). Without it the sweep starts its own
        # Ray: ray.init() alone would join any cluster that happens to run on this machine.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 logging_level=logging.WARNING)
    trainable = tune.with_parameters(
        run_trial, train_fn=sweep.trainable, base=sweep.config, images=dataset.images,
        ref_stats=ref_stats, extractor=extractor.name, weights_path=getattr(extractor, "weights_path", None),
        tracking=tracking, cpus=sweep.resources.cpus)
    tuner = build_tuner(sweep, trainable, storage_path=SWEEPS_DIR / "ray_results",
                        run_name=f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                        gpus_available=ray.cluster_resources().get("GPU", 0))
    return tuner.fit()


def _summarise(sweep: Sweep, results, tracking: Tracking) -> SweepSummary:
    runs = child_runs(tracking)
    best = results.get_best_result(metric=sweep.metric, mode=sweep.mode, scope="all")
    best_fid = float(best.metrics_dataframe[sweep.metric].min())
    best_cfg = sweep.trial_config(best.config)
    version = register_generator(tracking, runs[best.metrics["trial_id"]], best_cfg,
                                 best.get_best_checkpoint(sweep.metric, sweep.mode), sweep.name)
    table = trial_table(results, runs, sweep)
    close_trial_runs(tracking, table, runs)

    client = tracking.client()
    client.log_metric(tracking.parent_run_id, f"best_{sweep.metric}", best_fid)
    baseline_fid = baseline(table, sweep)
    if baseline_fid is not None:
        # How far the sweep's best beats the hand-tuned warm-start configs (positive = better).
        sign = 1 if sweep.mode == "min" else -1
        client.log_metric(tracking.parent_run_id, f"baseline_{sweep.metric}", baseline_fid)
        client.log_metric(tracking.parent_run_id, f"{sweep.metric}_gain_over_baseline", sign * (baseline_fid - best_fid))
    client.set_tag(tracking.parent_run_id, "sweeper.best_trial", best.metrics["trial_id"])
    client.set_tag(tracking.parent_run_id, "sweeper.registered_model", f"{model_name(sweep.name)}/{version}")
    with tempfile.TemporaryDirectory() as tmp:
        table.to_parquet(Path(tmp) / "trials.parquet")
        (Path(tmp) / "summary.json").write_text(json.dumps(
            {"best_trial": best.metrics["trial_id"], f"best_{sweep.metric}": best_fid,
             f"baseline_{sweep.metric}": baseline_fid,
             "best_config": dataclasses.asdict(best_cfg), "model": model_name(sweep.name),
             "model_version": version}, indent=2))
        client.log_artifacts(tracking.parent_run_id, tmp)
    client.set_terminated(tracking.parent_run_id, status="FINISHED")
    return SweepSummary(sweep.name, best.metrics["trial_id"], best_fid, baseline_fid, dict(best.config), version,
                        tracking, table)


def _sweep_params(sweep: Sweep) -> dict:
    searched = sweep.searched_keys()
    fixed = {k: v for k, v in dataclasses.asdict(sweep.config).items() if k not in searched}
    return {**fixed, "num_samples": sweep.num_samples, "searched": ",".join(sorted(searched)),
            "searcher": f"optuna-tpe(seed={sweep.searcher.seed})",
            "scheduler": f"asha(grace={sweep.scheduler.grace_period},rf={sweep.scheduler.reduction_factor})"}
