"""`sweeper run`: prepare what the trials share once, run the Tuner, measure the best trials
again, register the winner, and summarise into MLflow. The same for every kind of trial: what
depends on the kind (data, FID statistics, generators, the final number) is its Task's."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
import traceback
from pathlib import Path

import pandas as pd
import ray
from ray import tune

from sweeper import console, final, report
from sweeper.footprint import resolve_gpu_fraction
from sweeper.outcomes import COMPLETED, ERROR, INTERRUPTED, NO_WINNER, close_trial_runs, mark_interrupted, trial_table
from sweeper.registry import model_name, promote, tag_version
from sweeper.spec import Sweep
from sweeper.summary import log_summary
from sweeper.tasks import Inputs
from sweeper import resume
from sweeper.resume import SweepState, experiment_path
from sweeper.tracking import (SWEEPS_DIR, Tracking, check_reachable, child_runs, default_tracking_uri,
                              drop_lost_trial_runs, open_sweep, reopen_sweep)
from sweeper.trial import run_trial
from sweeper.tuner import build_searcher, build_tuner, trial_resources

log = logging.getLogger("sweeper")


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    sweep_name: str
    tracking: Tracking
    table: pd.DataFrame
    final_metric: str                  # the number that picks the winner's @best ("fid_final", "test_acc")
    measured_on: str = ""              # how it was measured, e.g. "inception-v3-compat, 256 generated vs 512 real"
    interrupted: bool = False
    experiment_path: str | None = None
    winner: str | None = None          # trial id
    final_value: float | None = None   # the winner's final_metric
    best_config: dict | None = None
    metrics: dict = dataclasses.field(default_factory=dict)  # the task's parent-run summary (baseline, CAS)
    lines: list = dataclasses.field(default_factory=list)    # the task's summary lines
    model: str | None = None
    model_version: str | None = None
    alias_decision: str | None = None
    runs_view: str = ""  # the MLflow UI's runs table of this sweep, from the UI's root URL


def run_sweep(sweep: Sweep, *, sweep_file: str, quick: bool, storage: str | None = None) -> SweepSummary:
    """`storage`: Tune's storage (a local path or s3://, gs:// URI; None = sweeps/ray_results here)."""
    path = experiment_path(storage or str((SWEEPS_DIR / "ray_results").resolve()),
                           f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return _run(sweep, quick=quick, sweep_file=sweep_file, path=path, resumed=None)


def resume_sweep(state: SweepState) -> SweepSummary:
    """Continue an interrupted sweep (see sweeper.resume): the same Tune experiment, searcher state,
    MLflow parent run and child runs; unfinished and errored trials go on from their checkpoints."""
    return _run(resume.load_sweep(state), quick=state.quick, sweep_file=state.sweep_file, path=state.path,
                resumed=state)


def _run(sweep: Sweep, *, quick: bool, sweep_file: str, path: str, resumed: SweepState | None) -> SweepSummary:
    task = sweep.task
    check_reachable(default_tracking_uri() if resumed is None else resumed.tracking_uri)
    task.check(sweep)
    # Before Ray starts: the heavy shared preparation (the data's decode pool forks only while the
    # process is single-threaded). Trials get what it made through Ray's object store.
    prepared = task.prepare(sweep)
    _start_ray()
    available = ray.cluster_resources()
    inputs = task.inputs(sweep, prepared, available)
    # Resources(gpu_fraction="auto"): a trial's GPU memory measured once, before the sweep is
    # recorded, so a resume (which loads the recorded sweep) packs its trials the same way.
    sweep = resolve_gpu_fraction(sweep, inputs.trial, available)
    for line in inputs.lines:
        print(line, flush=True)

    # MLflow structure: the experiment and the sweep's parent run (the same one on a resume).
    if resumed is None:
        tracking = open_sweep(sweep.name, default_tracking_uri(), params=_sweep_params(sweep),
                              tags={"sweeper.sweep_file": sweep_file, "sweeper.quick": str(quick),
                                    "sweeper.kind": type(sweep.config).__name__, "sweeper.experiment_path": path,
                                    **inputs.parent_tags},
                              child_params=inputs.params, child_tags=inputs.tags)
        state = SweepState(path, sweep.name, sweep_file, quick, resume.RUNNING, resume.now(), tracking.uri,
                           tracking.experiment_id, tracking.parent_run_id)
        resume.write_state(state, sweep)
    else:
        tracking = reopen_sweep(resumed.tracking_uri, resumed.experiment_id, resumed.parent_run_id,
                                child_params=inputs.params, child_tags=inputs.tags)
        state = resume.set_status(resumed, resume.RUNNING)
        print(f"resuming {path}: MLflow parent run {tracking.parent_run_id}", flush=True)
    table = None
    try:
        tuner, searcher = _tuner(sweep, inputs, tracking, available, path, resumed is not None)
        results = tuner.fit()
        deleted = resumed and drop_lost_trial_runs(tracking, {Path(r.path).name for r in results if r.path})
        if deleted:
            print(f"{deleted} trial run(s) of trials Tune never saved before the driver died: deleted", flush=True)
        table = trial_table(results, child_runs(tracking), sweep, searcher.proposed_by)
        if len(searcher.finished) < max(len(results), sweep.num_samples):
            # Ctrl-C: Tune stopped and returned what it had. A half-run sweep registers nothing.
            resume.set_status(state, resume.INTERRUPTED)
            return _end_interrupted(sweep, tracking, mark_interrupted(table, searcher.finished), path,
                                    results, searcher)
        close_trial_runs(tracking, table)
        if task.final_metric is not None:
            table = _final_evaluation(sweep, table, results, inputs, tracking, available)
        summary = _summarise(sweep, table, results, searcher, tracking, inputs, quick)
        resume.set_status(state, resume.FINISHED)
        return summary
    except KeyboardInterrupt:
        # A second Ctrl-C inside Tune, or one during the final evaluation.
        resume.set_status(state, resume.INTERRUPTED)
        _end_interrupted(sweep, tracking, table, path)
        raise
    except BaseException:
        _record_failure(tracking, state, traceback.format_exc())
        raise


def _record_failure(tracking: Tracking, state: SweepState, trace: str) -> None:
    """A bug or an outage: the traceback stays with the sweep, not only on a closed terminal. Best
    effort (the store may be what failed); the original error is what the user must see."""
    try:
        resume.set_status(state, resume.FAILED)
        client = tracking.client()
        client.log_text(tracking.parent_run_id, trace, "error.txt")
        client.set_tag(tracking.parent_run_id, "sweeper.outcome", ERROR)
        client.set_terminated(tracking.parent_run_id, status="FAILED")
    except Exception as e:  # noqa: BLE001
        log.warning("could not record the failure in MLflow (%s); `sweeper resume` can finish the sweep",
                    str(e).splitlines()[0] if str(e) else type(e).__name__)


def _start_ray() -> None:
    if not ray.is_initialized():
        # RAY_ADDRESS joins a cluster (`ray job submit` sets it). Without it the sweep starts its own
        # Ray: ray.init() alone would join any cluster that happens to run on this machine.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 logging_level=logging.WARNING)


def _tuner(sweep: Sweep, inputs: Inputs, tracking, available, path: str, restore: bool):
    """(Tuner, its SweepSearch): a new experiment at `path`, or the one there restored."""
    # Tune saves its experiment state every 10 s or more, and deletes a trial's checkpoints that
    # fall out of the best `num_to_keep` at once: a driver killed in between leaves a state whose
    # latest checkpoint is gone, and that trial cannot resume. Saving at every step closes the gap
    # (the state is a few kB per trial).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    console.use_classic_reporter()
    trainable = tune.with_parameters(
        run_trial, task=sweep.task, train_fn=sweep.trainable, base=sweep.config, shared=inputs.trial,
        tracking=tracking, cpus=sweep.resources.cpus, metric=sweep.metric, mode=sweep.mode)
    if not restore:
        searcher = build_searcher(sweep)
        storage, name = resume.split_experiment_path(path)
        return build_tuner(sweep, trainable, storage_path=storage, run_name=name, available=available,
                           searcher=searcher), searcher
    tuner = tune.Tuner.restore(path, tune.with_resources(trainable, trial_resources(sweep, available.get("GPU", 0))),
                               resume_unfinished=True, resume_errored=True)
    # The searcher Tune restores (from tuner.pkl, then its saved state) is not otherwise exposed;
    # its record of who proposed what and which trials finished is needed for the trial table.
    return tuner, tuner._local_tuner._tune_config.search_alg


def _final_evaluation(sweep, table, results, inputs: Inputs, tracking, available) -> pd.DataFrame:
    """The task's final metrics of each candidate's best checkpoint, logged to its run (at the step
    of that checkpoint, with the files the task made) and added to the table."""
    jobs, periods = {}, {}
    for trial_id in final.candidates(table, sweep.metric, sweep.mode, sweep.final.top_k):
        result = _result(results, trial_id)
        checkpoint, metrics = final.best_checkpoint(result, sweep.metric, sweep.mode)
        if checkpoint is not None:
            jobs[trial_id] = (sweep.trial_config(result.config), checkpoint)
            periods[trial_id] = int(metrics["eval_period"])
    print(f"final evaluation: {len(jobs)} best checkpoints measured again ({inputs.measured_on})", flush=True)
    measured = final.measure(jobs, task=sweep.task, shared={**inputs.trial, **inputs.final},
                             resources=trial_resources(sweep, available.get("GPU", 0)))
    client = tracking.client()
    table = table.copy()
    table[sweep.task.final_metric] = float("nan")
    table["final_eval_period"] = float("nan")
    table.attrs["final_metrics"] = sorted({key for metrics, _ in measured.values() for key in metrics})
    for trial_id, (metrics, files) in measured.items():
        row = table.index[table["trial_id"] == trial_id][0]
        run_id = table.loc[row, "run_id"]
        for key, value in {**metrics, "final_eval_period": periods[trial_id]}.items():
            table.loc[row, key] = value
            client.log_metric(run_id, key, float(value), step=periods[trial_id])
        for key, value in inputs.final_tags.items():
            client.set_tag(run_id, key, value)
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                (Path(tmp) / name).write_bytes(content)
            if files:
                client.log_artifacts(run_id, tmp, artifact_path="final")
    return table


def _summarise(sweep, table, results, searcher, tracking, inputs: Inputs, quick) -> SweepSummary:
    task, client = sweep.task, tracking.client()
    column, mode = task.winner_by(sweep)
    winner = final.winner(table, column, mode, measured=task.final_metric)
    final_metric = task.final_metric or f"best_{sweep.metric}"
    metrics, lines = task.summarise(sweep, table)
    registered = {}
    if winner is not None:
        value = float(_row(table, winner)[final_metric])
        metrics = {final_metric: value, **metrics}
        client.set_tag(tracking.parent_run_id, "sweeper.best_trial", winner)
        if task.model_kind is not None:
            registered = _register(sweep, table, results, tracking, inputs, quick, winner)
    for key, value in metrics.items():
        client.log_metric(tracking.parent_run_id, key, value)
    summary = SweepSummary(
        sweep.name, tracking, table, final_metric, inputs.measured_on, winner=winner,
        final_value=metrics.get(final_metric), best_config=dict(_result(results, winner).config) if winner else None,
        metrics=metrics, lines=lines, **registered)
    log_summary(tracking, sweep, table, results, searcher, winner, extra={"summary.json": _summary_json(summary)})
    client.set_tag(tracking.parent_run_id, "sweeper.outcome", COMPLETED if winner is not None else NO_WINNER)
    client.set_terminated(tracking.parent_run_id, status="FINISHED")
    return dataclasses.replace(summary, runs_view=report.save_runs_view(client, report.latest_sweep(client, sweep.name)))


def _register(sweep, table, results, tracking, inputs: Inputs, quick, winner) -> dict:
    task, row, result = sweep.task, _row(table, winner), _result(results, winner)
    cfg = sweep.trial_config(result.config)
    checkpoint, _ = final.best_checkpoint(result, sweep.metric, sweep.mode)
    name = model_name(sweep.name, task.model_kind, quick)
    measured = {k: f"{row[k]:.6g}" for k in table.attrs.get("final_metrics", [task.final_metric])}
    tags = {**measured, "sweeper.trial_id": winner, "sweeper.eval_period": int(row["final_eval_period"]),
            "sweeper.sweep_run_id": tracking.parent_run_id, **{f"sweeper.{k}": v for k, v in inputs.params.items()}}
    description = (f"Winner of sweep {sweep.name} (trial {winner}): {task.final_metric} "
                   f"{row[task.final_metric]:.4g} ({inputs.measured_on}), checkpoint of eval period "
                   f"{tags['sweeper.eval_period']}.")
    with checkpoint.as_directory() as directory:
        version = task.log_model(tracking, row["run_id"], cfg, directory, name)
    client = tracking.client()
    tag_version(client, name, version, tags=tags, footing=inputs.footing, description=description)
    moved, why = promote(client, name, version, task.final_metric, task.final_mode)
    print(f"models:/{name}@best {why}", flush=True)
    client.set_tag(tracking.parent_run_id, "sweeper.registered_model", f"{name}/{version}")
    # The run page's description: a link to the registered version (the UI lists only models logged
    # by the run itself, and the winner was logged by its trial's run).
    client.set_tag(tracking.parent_run_id, "mlflow.note.content",
                   f"Winner: trial {winner}, {task.final_metric} {row[task.final_metric]:.4g} ({inputs.measured_on}). "
                   f"Registered as [models:/{name}/{version}](#/models/{name}/versions/{version}); "
                   f"@best {why}.")
    client.set_tag(tracking.parent_run_id, "sweeper.best_alias_decision", why)
    return {"model": name, "model_version": version, "alias_decision": why}


def _end_interrupted(sweep, tracking, table, experiment_path, results=None, searcher=None) -> SweepSummary:
    """Every run still open ends KILLED (finished trials keep their outcome); nothing is registered;
    the parent gets the trial table and figures of what ran."""
    client = tracking.client()
    if table is not None:
        close_trial_runs(tracking, table)
        log_summary(tracking, sweep, table, results, searcher, winner=None)
    for trial_id, run_id in child_runs(tracking).items():
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "sweeper.outcome", INTERRUPTED)
            client.set_terminated(run_id, status="KILLED")
    client.set_tag(tracking.parent_run_id, "sweeper.outcome", INTERRUPTED)
    client.set_terminated(tracking.parent_run_id, status="KILLED")
    return SweepSummary(sweep.name, tracking, table if table is not None else pd.DataFrame(),
                        sweep.task.final_metric or "", interrupted=True, experiment_path=experiment_path)


def _result(results, trial_id: str):
    return next(r for r in results if r.metrics and r.metrics.get("trial_id") == trial_id)


def _row(table: pd.DataFrame, trial_id: str) -> pd.Series:
    return table[table["trial_id"] == trial_id].iloc[0]


def _summary_json(summary: SweepSummary) -> bytes:
    return json.dumps(
        {"best_trial": summary.winner, summary.final_metric: summary.final_value,
         "measured_on": summary.measured_on, **summary.metrics, "best_config": summary.best_config,
         "model": summary.model, "model_version": summary.model_version,
         "best_alias_decision": summary.alias_decision}, indent=2, default=str).encode()


def _sweep_params(sweep: Sweep) -> dict:
    searched = sweep.searched_keys()
    fixed = {k: v for k, v in dataclasses.asdict(sweep.config).items() if k not in searched}
    return {**fixed, "num_samples": sweep.num_samples, "searched": ",".join(sorted(searched)),
            "metric": f"{sweep.metric} ({sweep.mode})",
            "searcher": f"optuna-tpe(seed={sweep.searcher.seed},"
                        f"n_startup={sweep.searcher.startup_trials(sweep.num_samples)},constant_liar)",
            "scheduler": "fifo" if sweep.scheduler is None else
                         f"asha(grace={sweep.scheduler.grace_period},rf={sweep.scheduler.reduction_factor},"
                         f"warm_starts_never_stopped)",
            "final_top_k": sweep.final.top_k}
