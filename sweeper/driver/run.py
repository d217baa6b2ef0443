"""`sweeper run`: prepare what the trials share once, run the Tuner, measure the best trials
again, register the winner, and summarise into MLflow. The same for every kind of trial: what
depends on the kind (data, FID statistics, generators, the final number) is its Kind's."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import traceback
from pathlib import Path

import pandas as pd
import ray
from ray import tune
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

from sweeper.compat import save_state_at_a_cost_share, tune_config_of
from sweeper.definition import ASHA, POPULATION, Sweep, without_generation
from sweeper.driver import final, preflight, resume
from sweeper.driver.planning import plan_params, plan_sweep
from sweeper.driver.register import model_run_id, register
from sweeper.driver.resume import SweepState, experiment_path
from sweeper.driver.running import Running
from sweeper.kinds import complete, kind_of
from sweeper.search import console
from sweeper.search.footprint import resolve_gpu_fraction
from sweeper.search.promotion import RunningLimiter
from sweeper.search.scheduler import WarmStartASHA
from sweeper.search.spending import Spending, read_search_state, register_spending, spending_of
from sweeper.search.tuner import build_searcher, build_tuner
from sweeper.tracking import report
from sweeper.tracking.lineage import log_lineage
from sweeper.tracking.outcomes import (
    COMPLETED,
    ERROR,
    INTERRUPTED,
    NO_WINNER,
    close_trial_runs,
    end_run,
    mark_interrupted,
    trial_table,
)
from sweeper.tracking.registry import model_name
from sweeper.tracking.rungs import log_rungs
from sweeper.tracking.runs import (
    SWEEPS_DIR,
    Tracking,
    check_reachable,
    child_runs,
    default_tracking_uri,
    drop_lost_trial_runs,
    open_sweep,
    reopen_sweep,
)
from sweeper.tracking.summary import log_summary
from sweeper.tracking.sweep_report import log_report
from sweeper.trial.checkpoints import resuming_from_what_survives
from sweeper.trial.leftovers import deliver_leftovers
from sweeper.trial.system import sampling_interval
from sweeper.trial.trainable import run_trial

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
    metrics: dict = dataclasses.field(default_factory=dict)  # the kind's parent-run summary (baseline, CAS)
    lines: list = dataclasses.field(default_factory=list)    # the kind's summary lines
    model: str | None = None
    model_version: str | None = None
    alias_decision: str | None = None
    runs_view: str = ""  # the MLflow UI's runs table of this sweep, from the UI's root URL


def run_sweep(sweep: Sweep, *, sweep_file: str, quick: bool, storage: str | None = None,
              verbose: bool | None = None) -> SweepSummary:
    """`storage`: Tune's storage (a local path or s3://, gs:// URI; None = sweeps/ray_results here);
    `verbose`: a console line per eval period (None: for a quick sweep, which is run to be watched)."""
    path = experiment_path(storage or str((SWEEPS_DIR / "ray_results").resolve()),
                           f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return _run(complete(sweep), quick=quick, sweep_file=sweep_file, path=path, resumed=None,
                verbose=quick if verbose is None else verbose)


def resume_sweep(state: SweepState) -> SweepSummary:
    """Continue an interrupted sweep (see sweeper.driver.resume): the same Tune experiment, searcher
    state, MLflow parent run and child runs; unfinished and errored trials go on from their checkpoints.
    Its console is the one it was started with (Tune restores its callbacks)."""
    return _run(complete(resume.recorded_sweep(state)), quick=state.quick, sweep_file=state.sweep_file,
                path=state.path, resumed=state)


def _run(sweep: Sweep, *, quick: bool, sweep_file: str, path: str, resumed: SweepState | None,
         verbose: bool = False) -> SweepSummary:
    run, state = _start(sweep, quick=quick, sweep_file=sweep_file, path=path, resumed=resumed)
    run = dataclasses.replace(run, verbose=verbose)
    table = None
    try:
        tuner, searcher = _tuner(run, restore=resumed is not None)
        results = tuner.fit()
        for line in deliver_leftovers(run.tracking, results):  # trials that ended while MLflow was down
            print(line, flush=True)
        deleted = resumed and drop_lost_trial_runs(run.tracking, {Path(r.path).name for r in results if r.path})
        if deleted:
            print(f"{deleted} trial run(s) of trials Tune never saved before the driver died: deleted", flush=True)
        table = trial_table(results, child_runs(run.tracking), run.sweep, searcher.proposed_by, searcher.warm_starts(),
                            run.kind.group)
        spending = spending_of(run.path) if run.sweep.budget is not None else None
        budgeted = spending is not None and (spending.exhausted() or searcher.closed_by_budget)
        if spending is not None:
            print(f"budget: the trials spent {spending.spent:.4g} of {spending.budget}"
                  f"{' (all of it)' if spending.exhausted() else ''}", flush=True)
        if not budgeted and len(searcher.finished) < max(len(results), run.sweep.num_samples):
            # Ctrl-C: Tune stopped and returned what it had. A half-run sweep registers nothing.
            resume.set_status(state, resume.INTERRUPTED)
            return _end_interrupted(run, mark_interrupted(table, searcher.finished), results, searcher)
        close_trial_runs(run.tracking, table)
        candidates = {}
        if run.kind.final_metric is not None:
            table, candidates = final.evaluate(run, table, results, state)
        summary = _summarise(run, table, results, searcher, candidates, state)
        resume.set_status(state, resume.FINISHED)
        return summary
    except KeyboardInterrupt:
        # A second Ctrl-C inside Tune, or one during the final evaluation.
        resume.set_status(state, resume.INTERRUPTED)
        _end_interrupted(run, table)
        raise
    except BaseException:
        _record_failure(run.tracking, state, traceback.format_exc())
        raise


def _start(sweep: Sweep, *, quick: bool, sweep_file: str, path: str,
           resumed: SweepState | None) -> tuple[Running, SweepState]:
    """Everything before the Tuner: the inputs every trial shares, the GPU packing, the MLflow runs."""
    kind = kind_of(sweep.config)
    tracking_uri = default_tracking_uri() if resumed is None else resumed.tracking_uri
    check_reachable(tracking_uri)
    kind.check(sweep)
    sampling_interval()  # SWEEPER_SYSTEM_METRICS_S, which every trial reads: a bad value is bad input here
    # Proven here, not found after minutes of preparation (sweeper.driver.preflight).
    preflight.check_device(sweep)
    preflight.prove_storage(path, storage=resume.split_experiment_path(path)[0])
    preflight.prove_tracking(tracking_uri, sweep.name)
    # Before Ray starts: the heavy shared preparation (the data's decode pool forks only while the
    # process is single-threaded). Trials get what it made through Ray's object store.
    prepared = kind.prepare(sweep)
    _start_ray()
    available = ray.cluster_resources()
    inputs = kind.inputs(sweep, prepared, available)
    # Resources(gpu_fraction="auto"): a trial's GPU memory measured once, before the sweep is
    # recorded, so a resume (which loads the recorded sweep) packs its trials the same way.
    sweep = resolve_gpu_fraction(sweep, kind, inputs.trial, available)
    for line in inputs.lines:
        print(line, flush=True)
    per_trial = sweep.resources.per_trial(available.get("GPU", 0))
    given_budget, plan = sweep.budget, None
    if resumed is None:
        sweep, plan, lines = plan_sweep(sweep, kind, inputs.trial, per_trial)
        for line in lines:
            print(line, flush=True)
    if resumed is not None:
        tracking = reopen_sweep(resumed.tracking_uri, resumed.experiment_id, resumed.parent_run_id,
                                child_params=inputs.params, child_tags=inputs.tags)
        print(f"resuming {path}: MLflow parent run {tracking.parent_run_id}", flush=True)
        return Running(sweep, kind, inputs, tracking, available, per_trial, path, quick), resume.set_status(resumed, resume.RUNNING)
    # MLflow structure: the experiment and the sweep's parent run.
    tracking = open_sweep(sweep.name, default_tracking_uri(), params={**_sweep_params(sweep), **plan_params(plan, given_budget)},
                          tags={"sweeper.sweep_file": sweep_file, "sweeper.quick": str(quick),
                                "sweeper.kind": type(sweep.config).__name__, "sweeper.experiment_path": path,
                                **inputs.parent_tags},
                          child_params=inputs.params, child_tags=inputs.tags)
    state = SweepState(path, sweep.name, sweep_file, quick, resume.RUNNING, resume.now(), tracking.uri,
                       tracking.experiment_id, tracking.parent_run_id)
    resume.write_state(state, sweep)
    return Running(sweep, kind, inputs, tracking, available, per_trial, path, quick, plan), state


def _record_failure(tracking: Tracking, state: SweepState, trace: str) -> None:
    """A bug or an outage: the traceback stays with the sweep, not only on a closed terminal. Best
    effort (the store may be what failed); the original error is what the user must see."""
    try:
        resume.set_status(state, resume.FAILED)
        client = tracking.client()
        client.log_text(tracking.parent_run_id, trace, "error.txt")
        end_run(client, tracking.parent_run_id, ERROR)
    except Exception as e:  # noqa: BLE001
        log.warning("could not record the failure in MLflow (%s); `sweeper resume` can finish the sweep",
                    str(e).splitlines()[0] if str(e) else type(e).__name__)


def _start_ray() -> None:
    if not ray.is_initialized():
        # RAY_ADDRESS joins a cluster (`ray job submit` sets it). Without it the sweep starts its own
        # Ray: ray.init() alone would join any cluster that happens to run on this machine. A new
        # local Ray has token authentication, as sweeper wants it, and says so in a warning at
        # every start; where that is all it would say, it says nothing.
        if not os.environ.get("RAY_ADDRESS") and "RAY_AUTH_MODE" not in os.environ:
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 logging_level=logging.WARNING)


def _tuner(run: Running, restore: bool):
    """(Tuner, its SweepSearch): a new experiment at `run.path`, or the one there restored with its
    scheduler's state and its budget's spending (which Tune does not save where we can read them)."""
    # Tune saves its experiment state every 10 s or more, and deletes a trial's checkpoints that
    # fall out of the best `num_to_keep` at once: a driver killed in between leaves a state whose
    # latest checkpoint is gone (sweeper.trial.checkpoints) and trials that finished unrecorded.
    # Saved as often as it costs at most 5% of the driver's time: at every step for a small sweep.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "auto")
    # Tune also saves it whenever a trial has checkpointed `num_to_keep` times since the last save
    # (what keeps the state's checkpoints alive), and warns each time that is often: it is meant.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    save_state_at_a_cost_share(_ExperimentCheckpointManager)
    console.use_classic_reporter()
    sweep = run.sweep
    trainable = resuming_from_what_survives(tune.with_parameters(
        run_trial, kind=run.kind, train_fn=sweep.trainable, base=sweep.config, shared=run.inputs.trial,
        tracking=run.tracking, cpus=sweep.resources.cpus, metric=sweep.metric, mode=sweep.mode,
        population=sweep.scheduler.mutated if isinstance(sweep.scheduler, POPULATION) else ()))
    if not restore:
        # A budget's sweep has room for more trials than its plan's (the budget stops it): the plan's third.
        searcher = build_searcher(sweep, configs=run.plan.num_samples if run.plan else None)
        storage, name = resume.split_experiment_path(run.path)
        return build_tuner(sweep, trainable, storage_path=storage, run_name=name, available=run.available,
                           per_trial=run.per_trial, reported=run.kind.shown_metrics, searcher=searcher,
                           plan=run.plan, search_state_path=run.path, verbose=run.verbose,
                           tracking=run.tracking), searcher
    with resume.old_module_names():  # a sweep started before sweeper's modules moved
        tuner = tune.Tuner.restore(run.path, tune.with_resources(trainable, run.per_trial),
                                   resume_unfinished=True, resume_errored=True)
    # What Tune restores (from tuner.pkl, then the searcher's saved state) is not otherwise exposed:
    # the searcher's record of who proposed what and which trials finished (for the trial table),
    # and the scheduler, whose state is ours to put back, as the budget's spending is.
    config = tune_config_of(tuner)
    saved = read_search_state(run.path) or {}
    if saved.get("scheduler") is not None:
        config.scheduler.restore(saved["scheduler"])
    if sweep.budget is not None:
        register_spending(run.path, Spending.from_state(saved["budget"]) if saved.get("budget") else Spending(sweep.budget))
    search_alg = config.search_alg
    searcher = search_alg.searcher if isinstance(search_alg, RunningLimiter) else search_alg
    if isinstance(config.scheduler, WarmStartASHA):
        # Restored together from tuner.pkl they are already one; one pickled before the scheduler
        # held its searcher is not.
        config.scheduler.searcher = searcher
    resume.retell_retried(tuner, searcher)  # the errored trials resume_errored re-runs
    return tuner, searcher


def _summarise(run: Running, table, results, searcher, candidates: dict, state: SweepState) -> SweepSummary:
    """The winner registered, the parent run's numbers and files; each part once over the sweep's
    resumes (recorded in `state` as it finishes, see sweeper.driver.resume)."""
    sweep, kind, client = run.sweep, run.kind, run.tracking.client()
    column, mode = kind.winner_by(sweep)
    winner = final.winner(table, column, mode, measured=kind.final_metric)
    final_metric = kind.final_metric or f"best_{sweep.metric}"
    metrics, lines = kind.summarise(sweep, table)
    registered = {}
    if winner is not None:
        row = table[table["trial_id"] == winner].iloc[0]
        # With its interval where the kind measures one (a test accuracy: `test_acc_low`, `_high`).
        metrics = {**{key: float(row[key]) for key in (final_metric, f"{final_metric}_low", f"{final_metric}_high")
                      if key in row and pd.notna(row[key])}, **metrics}
        client.set_tag(run.tracking.parent_run_id, "sweeper.best_trial", winner)
        if kind.model_kind is not None:
            registered = _register_once(run, table, candidates[winner], state)
    stamp = resume.logged_at(state)
    if resume.recorded(state, resume.PARENT_METRICS) is None:
        for key, value in metrics.items():
            client.log_metric(run.tracking.parent_run_id, key, value, timestamp=stamp)
        resume.record(state, resume.PARENT_METRICS, {key: float(value) for key, value in metrics.items()})
    best_config = without_generation(final.result_of(results, winner).config) if winner else None
    summary = SweepSummary(sweep.name, run.tracking, table, final_metric, run.inputs.measured_on, winner=winner,
                           final_value=metrics.get(final_metric), best_config=best_config, metrics=metrics,
                           lines=lines, **registered)
    if resume.recorded(state, resume.SUMMARY) is None:
        log_summary(run.tracking, sweep, table, results, searcher, winner, kind.final_metric,
                    extra={"summary.json": _summary_json(summary)}, timestamp=stamp)
        _log_rungs(run, stamp)
        _log_lineage(run, candidates.get(winner), table)
        resume.record(state, resume.SUMMARY, True)
    end_run(client, run.tracking.parent_run_id, COMPLETED if winner is not None else NO_WINNER)
    record = report.latest_sweep(client, sweep.name)
    log_report(client, record)  # after end_run, so the page shows the sweep's outcome; warns, never fails
    return dataclasses.replace(summary, runs_view=report.save_runs_view(client, record))


def _register_once(run: Running, table, winner: final.Candidate, state: SweepState) -> dict:
    """The winner registered, or, after a resume, its registration as recorded. A version made from
    the winner's run that the state does not record is a registration the driver died inside (its
    tags or @best decision may be missing): deleted, then the registration done whole. A trial's
    run is registered at most once (only a sweep's winner is), so its run id finds it."""
    done = resume.recorded(state, resume.REGISTERED)
    if done is not None and done["trial_id"] == winner.trial_id:
        print(f"registered before the driver stopped: models:/{done['model']}/{done['model_version']} "
              f"(not again)", flush=True)
        return {key: done[key] for key in ("model", "model_version", "alias_decision")}
    client = run.tracking.client()
    name = model_name(run.sweep.name, run.kind.model_kind, run.quick)
    with winner.checkpoint.as_directory() as directory:
        run_id = model_run_id(table[table["trial_id"] == winner.trial_id].iloc[0]["run_id"], directory)
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        client.delete_model_version(name, version.version)
        print(f"models:/{name}/{version.version}: an unfinished registration, deleted; registering again", flush=True)
    registered = register(run, table, winner)
    resume.record(state, resume.REGISTERED, {"trial_id": winner.trial_id, **registered})
    return registered


def _end_interrupted(run: Running, table, results=None, searcher=None) -> SweepSummary:
    """Every run still open ends KILLED (finished trials keep their outcome); nothing is registered;
    the parent gets the trial table and figures of what ran."""
    client = run.tracking.client()
    if table is not None:
        close_trial_runs(run.tracking, table)
        log_summary(run.tracking, run.sweep, table, results, searcher, None, run.kind.final_metric)
        _log_rungs(run)
    for run_id in child_runs(run.tracking).values():
        if client.get_run(run_id).info.status == "RUNNING":
            end_run(client, run_id, INTERRUPTED)
    end_run(client, run.tracking.parent_run_id, INTERRUPTED)
    return SweepSummary(run.sweep.name, run.tracking, table if table is not None else pd.DataFrame(),
                        run.kind.final_metric or "", interrupted=True, experiment_path=run.path)


def _log_rungs(run: Running, timestamp: int | None = None) -> None:
    """The promotion scheduler's decisions, as saved with the experiment (sweeper.search.spending)."""
    state = (read_search_state(run.path) or {}).get("scheduler")
    if state is None:
        return
    try:
        for line in log_rungs(run.tracking.client(), run.tracking.parent_run_id, child_runs(run.tracking), state,
                              timestamp):
            print(line, flush=True)
    except Exception as e:  # noqa: BLE001  the sweep's results matter more than this record of them
        log.warning("the rungs' decisions were not logged (%s: %s)", type(e).__name__, str(e).splitlines()[0][:200])


def _log_lineage(run: Running, winner: final.Candidate | None, table) -> None:
    """A population's lineage table and figure on the parent run, the winner's path marked."""
    sweep = run.sweep
    if not isinstance(sweep.scheduler, POPULATION):
        return
    run_id = None
    if winner is not None:
        with winner.checkpoint.as_directory() as directory:
            run_id = model_run_id(table[table["trial_id"] == winner.trial_id].iloc[0]["run_id"], directory)
    log_lineage(run.tracking, list(sweep.scheduler.mutated), sweep.metric, run_id,
                winner.period if winner is not None else None, mode=sweep.mode)


def _summary_json(summary: SweepSummary) -> bytes:
    return json.dumps(
        {"best_trial": summary.winner, summary.final_metric: summary.final_value,
         "measured_on": summary.measured_on, **summary.metrics, "best_config": summary.best_config,
         "model": summary.model, "model_version": summary.model_version,
         "best_alias_decision": summary.alias_decision}, indent=2, default=str).encode()


def _sweep_params(sweep: Sweep) -> dict:
    return {**sweep.fixed_config(), "num_samples": sweep.num_samples, "searched": ",".join(sorted(sweep.searched_keys())),
            "metric": f"{sweep.metric} ({sweep.mode})",
            "searcher": f"optuna-tpe(seed={sweep.searcher.seed},"
                        f"n_startup={sweep.searcher.startup_trials(sweep.num_samples)},constant_liar)",
            "scheduler": _scheduler_name(sweep.scheduler),
            "final_top_k": sweep.final.top_k}


def _scheduler_name(scheduler) -> str:
    if scheduler is None:
        return "fifo"
    if isinstance(scheduler, ASHA):
        return f"asha(grace={scheduler.grace_period},rf={scheduler.reduction_factor},warm_starts_never_stopped)"
    if isinstance(scheduler, POPULATION):
        return (f"{type(scheduler).__name__.lower()}(interval={scheduler.interval},quantile={scheduler.quantile},"
                f"mutates={','.join(scheduler.mutated)})")
    return (f"promotion(eta={scheduler.reduction_factor},first_rung={scheduler.first_rung},"
            f"max_brackets={scheduler.max_brackets},rungs_in={scheduler.rungs_in})")
