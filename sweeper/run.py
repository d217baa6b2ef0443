"""`sweeper run`: prepare data and FID statistics once, run the Tuner, measure the best trials
again, register the winner, and summarise into MLflow."""
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

from sweeper import final
from sweeper.outcomes import (INTERRUPTED, baseline_gain, close_trial_runs, mark_interrupted, trial_table)
from sweeper.refstats import reference_stats
from sweeper.registry import model_name, promote, register_generator
from sweeper.spec import Sweep
from sweeper.tracking import SWEEPS_DIR, Tracking, child_runs, default_tracking_uri, open_sweep
from sweeper.trial import run_trial
from sweeper.tuner import build_searcher, build_tuner, trial_resources
from trainables.data import prepare
from trainables.metrics import RandomConvFeatures, load_extractor
from trainables.training.gan import resolve_device

log = logging.getLogger("sweeper")


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    sweep_name: str
    tracking: Tracking
    table: pd.DataFrame
    final_extractor: str
    final_samples: int
    ref_samples: int                   # real images in the reference statistics
    interrupted: bool = False
    experiment_path: str | None = None
    winner: str | None = None          # trial id, picked by fid_final
    fid_final: float | None = None
    best_config: dict | None = None
    baseline_fid: float | None = None  # best fid_final among the warm-start trials
    gain: float | None = None          # baseline minus the best searched trial's fid_final
    model: str | None = None
    model_version: str | None = None
    alias_decision: str | None = None


@dataclasses.dataclass(frozen=True)
class Extractors:
    per_eval: object
    final: object


def run_sweep(sweep: Sweep, *, sweep_file: str, quick: bool) -> SweepSummary:
    cfg = sweep.config
    # Data: once per sweep, on the driver, before Ray starts (the decode pool forks only while
    # the process is single-threaded). Trials get the uint8 array through Ray's object store.
    prepared = prepare(cfg.data, cfg.resolution, seed=cfg.seed)
    print(prepared.summary(), flush=True)
    dataset = prepared.data
    _start_ray()
    available = ray.cluster_resources()

    # FID reference statistics, once per extractor: the per-eval one and the final (standard) one.
    extractors = _extractors(sweep, available, resolve_device(cfg.device))
    print(_extractor_line(extractors, cfg), flush=True)
    eval_stats = reference_stats(dataset.images, dataset.fingerprint, extractors.per_eval, cfg.ref_samples)
    final_stats = eval_stats if extractors.final.name == extractors.per_eval.name else reference_stats(
        dataset.images, dataset.fingerprint, extractors.final, cfg.ref_samples)

    # MLflow structure: the experiment and the sweep's parent run.
    tracking = open_sweep(sweep.name, default_tracking_uri(), extractor=extractors.per_eval.name,
                          params=_sweep_params(sweep), tags={
                              "sweeper.sweep_file": sweep_file, "sweeper.quick": str(quick),
                              "sweeper.fid_final_extractor": extractors.final.name,
                              "sweeper.dataset_fingerprint": dataset.fingerprint,
                              "sweeper.dataset_cache_key": prepared.key})
    table = None
    try:
        searcher = build_searcher(sweep)
        results = _fit(sweep, dataset, extractors.per_eval, eval_stats, tracking, searcher, available)
        table = trial_table(results, child_runs(tracking), sweep, searcher.proposed_by)
        if len(searcher.finished) < max(len(results), sweep.num_samples):
            # Ctrl-C: Tune stopped and returned what it had. A half-run sweep registers nothing.
            return _end_interrupted(sweep, tracking, mark_interrupted(table, searcher.finished),
                                    extractors, results.experiment_path)
        close_trial_runs(tracking, table)
        table = _final_evaluation(sweep, table, results, extractors.final, final_stats, tracking, available)
        return _summarise(sweep, table, results, tracking, extractors, final_stats, dataset, quick)
    except KeyboardInterrupt:
        # A second Ctrl-C inside Tune, or one during the final evaluation.
        _end_interrupted(sweep, tracking, table, extractors, None)
        raise
    except BaseException:
        tracking.client().set_terminated(tracking.parent_run_id, status="FAILED")
        raise


def _start_ray() -> None:
    if not ray.is_initialized():
        # RAY_ADDRESS joins a cluster (`ray job submit` sets it). Without it the sweep starts its own
        # Ray: ray.init() alone would join any cluster that happens to run on this machine.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 logging_level=logging.WARNING)


def _extractors(sweep: Sweep, available: dict, device) -> Extractors:
    """The standard extractor (or the offline fallback, with its warning) for `fid_final`; the per-eval
    one is the same, or the random-conv proxy where it is asked for or trials run without a GPU
    (the standard Inception runs at ~10-20 img/s on a CPU core: minutes per eval)."""
    standard = load_extractor(device)
    proxy = sweep.eval_extractor == "proxy" or (sweep.eval_extractor == "auto" and available.get("GPU", 0) == 0)
    per_eval = RandomConvFeatures(seed=0, device=device) if proxy else standard
    if per_eval.name == standard.name:
        per_eval = standard
    return Extractors(per_eval, standard)


def _extractor_line(extractors: Extractors, cfg) -> str:
    if extractors.per_eval is extractors.final:
        return (f"FID: {extractors.final.name}, per eval on {cfg.fid_samples} samples, fid_final on "
                f"{cfg.final_fid_samples}, against {cfg.ref_samples} real images")
    return (f"FID per eval: {extractors.per_eval.name} on {cfg.fid_samples} samples, a cheap proxy that ranks "
            f"trials (no GPU), not comparable to published FIDs; fid_final: {extractors.final.name} on "
            f"{cfg.final_fid_samples} samples; both against {cfg.ref_samples} real images")


def _fit(sweep, dataset, extractor, ref_stats, tracking, searcher, available):
    trainable = tune.with_parameters(
        run_trial, train_fn=sweep.trainable, base=sweep.config, images=dataset.images,
        ref_stats=ref_stats, extractor=extractor.name, weights_path=getattr(extractor, "weights_path", None),
        tracking=tracking, cpus=sweep.resources.cpus)
    tuner = build_tuner(sweep, trainable, storage_path=SWEEPS_DIR / "ray_results",
                        run_name=f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}", available=available,
                        searcher=searcher)
    return tuner.fit()


def _final_evaluation(sweep, table, results, extractor, ref_stats, tracking, available) -> pd.DataFrame:
    """fid_final/kid_final of each candidate's best checkpoint, logged to its run and added to the table."""
    jobs, periods = {}, {}
    for trial_id in final.candidates(table, sweep.metric, sweep.mode, sweep.final.top_k):
        result = _result(results, trial_id)
        checkpoint, metrics = final.best_checkpoint(result, sweep.metric, sweep.mode)
        if checkpoint is not None:
            jobs[trial_id] = (sweep.trial_config(result.config), checkpoint)
            periods[trial_id] = int(metrics["eval_period"])
    print(f"final evaluation: {len(jobs)} best checkpoints measured again with {extractor.name} "
          f"on {sweep.config.final_fid_samples} samples", flush=True)
    measured = final.measure(jobs, extractor=extractor.name, weights_path=getattr(extractor, "weights_path", None),
                             ref_stats=ref_stats, resources=trial_resources(sweep, available.get("GPU", 0)))
    client = tracking.client()
    table = table.copy()
    for column in ("fid_final", "kid_final", "final_eval_period"):
        table[column] = float("nan")
    for trial_id, metrics in measured.items():
        row = table.index[table["trial_id"] == trial_id][0]
        table.loc[row, ["fid_final", "kid_final", "final_eval_period"]] = [
            metrics["fid_final"], metrics["kid_final"], periods[trial_id]]
        run_id = table.loc[row, "run_id"]
        for key, value in metrics.items():
            client.log_metric(run_id, key, value, step=periods[trial_id])
        client.set_tag(run_id, "sweeper.fid_final_extractor", extractor.name)
    return table


def _summarise(sweep, table, results, tracking, extractors, final_stats, dataset, quick) -> SweepSummary:
    client = tracking.client()
    baseline, gain = baseline_gain(table, "fid_final", "min")
    winner = final.winner(table)
    registered = {}
    if winner is not None:
        registered = _register(sweep, table, results, tracking, extractors.final.name, final_stats, dataset,
                               quick, winner)
        client.log_metric(tracking.parent_run_id, "fid_final", float(_row(table, winner)["fid_final"]))
        client.set_tag(tracking.parent_run_id, "sweeper.best_trial", winner)
    if baseline is not None:
        client.log_metric(tracking.parent_run_id, "baseline_fid_final", baseline)
    if gain is not None:
        client.log_metric(tracking.parent_run_id, "fid_final_gain_over_baseline", gain)
    summary = SweepSummary(
        sweep.name, tracking, table, extractors.final.name, sweep.config.final_fid_samples,
        final_stats.n_samples, winner=winner,
        fid_final=float(_row(table, winner)["fid_final"]) if winner else None,
        best_config=dict(_result(results, winner).config) if winner else None,
        baseline_fid=baseline, gain=gain, **registered)
    _log_parent_artifacts(tracking, table, summary)
    client.set_terminated(tracking.parent_run_id, status="FINISHED")
    return summary


def _register(sweep, table, results, tracking, extractor_name, final_stats, dataset, quick, winner) -> dict:
    row = _row(table, winner)
    result = _result(results, winner)
    cfg = sweep.trial_config(result.config)
    checkpoint, _ = final.best_checkpoint(result, sweep.metric, sweep.mode)
    name = model_name(sweep.name, quick)
    tags = {"fid_final": f"{row['fid_final']:.6g}", "kid_final": f"{row['kid_final']:.6g}",
            "sweeper.fid_final_extractor": extractor_name, "sweeper.data_fingerprint": dataset.fingerprint,
            "sweeper.resolution": cfg.resolution, "sweeper.final_fid_samples": cfg.final_fid_samples,
            "sweeper.ref_samples": final_stats.n_samples, "sweeper.trial_id": winner,
            "sweeper.eval_period": int(row["final_eval_period"]), "sweeper.sweep_run_id": tracking.parent_run_id}
    description = (f"Winner of sweep {sweep.name} (trial {winner}): fid_final {row['fid_final']:.2f} "
                   f"({extractor_name}, {cfg.final_fid_samples} generated vs {tags['sweeper.ref_samples']} real "
                   f"images at {cfg.resolution} px), checkpoint of eval period {tags['sweeper.eval_period']}.")
    with checkpoint.as_directory() as directory:
        version = register_generator(tracking, row["run_id"], cfg, directory, name, tags=tags, description=description)
    moved, why = promote(tracking.client(), name, version)
    print(f"models:/{name}@best {why}", flush=True)
    client = tracking.client()
    client.set_tag(tracking.parent_run_id, "sweeper.registered_model", f"{name}/{version}")
    client.set_tag(tracking.parent_run_id, "sweeper.best_alias_decision", why)
    return {"model": name, "model_version": version, "alias_decision": why}


def _end_interrupted(sweep, tracking, table, extractors, experiment_path) -> SweepSummary:
    """Every run still open ends KILLED (finished trials keep their outcome); nothing is registered."""
    client = tracking.client()
    if table is not None:
        close_trial_runs(tracking, table)
    for trial_id, run_id in child_runs(tracking).items():
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "sweeper.outcome", INTERRUPTED)
            client.set_terminated(run_id, status="KILLED")
    client.set_tag(tracking.parent_run_id, "sweeper.outcome", INTERRUPTED)
    client.set_terminated(tracking.parent_run_id, status="KILLED")
    return SweepSummary(sweep.name, tracking, table if table is not None else pd.DataFrame(),
                        extractors.final.name, sweep.config.final_fid_samples, sweep.config.ref_samples,
                        interrupted=True, experiment_path=experiment_path)


def _result(results, trial_id: str):
    return next(r for r in results if r.metrics and r.metrics.get("trial_id") == trial_id)


def _row(table: pd.DataFrame, trial_id: str) -> pd.Series:
    return table[table["trial_id"] == trial_id].iloc[0]


def _log_parent_artifacts(tracking: Tracking, table: pd.DataFrame, summary: SweepSummary) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        table.to_parquet(Path(tmp) / "trials.parquet")
        (Path(tmp) / "summary.json").write_text(json.dumps(
            {"best_trial": summary.winner, "fid_final": summary.fid_final,
             "fid_final_extractor": summary.final_extractor, "baseline_fid_final": summary.baseline_fid,
             "fid_final_gain_over_baseline": summary.gain, "best_config": summary.best_config,
             "model": summary.model, "model_version": summary.model_version,
             "best_alias_decision": summary.alias_decision}, indent=2, default=str))
        tracking.client().log_artifacts(tracking.parent_run_id, tmp)


def _sweep_params(sweep: Sweep) -> dict:
    searched = sweep.searched_keys()
    fixed = {k: v for k, v in dataclasses.asdict(sweep.config).items() if k not in searched}
    return {**fixed, "num_samples": sweep.num_samples, "searched": ",".join(sorted(searched)),
            "searcher": f"optuna-tpe(seed={sweep.searcher.seed},"
                        f"n_startup={sweep.searcher.startup_trials(sweep.num_samples)},constant_liar)",
            "scheduler": "fifo" if sweep.scheduler is None else
                         f"asha(grace={sweep.scheduler.grace_period},rf={sweep.scheduler.reduction_factor},"
                         f"warm_starts_never_stopped)",
            "final_top_k": sweep.final.top_k, "eval_extractor": sweep.eval_extractor}
