"""MLflow: one experiment per sweep, a parent run for the sweep, one nested child run per trial.

One writer for structure: the driver creates the experiment and the parent run, closes runs and
registers models; a trial writes only into its own child run, which it finds again by trial id
when Ray retries or resumes it, so a trial never has two runs.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from trainables.errors import BadInput

SWEEPS_DIR = Path("sweeps")
TRIAL_TAG = "sweeper.trial_id"
PARENT_TAG = "mlflow.parentRunId"
STEP_METRIC = "eval_period"  # the step of every per-period metric: the eval period it was measured at
# A population member's runs (PBT): one per generation, the next made at each exploit (sweeper.tracking.lineage).
GENERATION_TAG = "sweeper.generation"


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set (a cluster's `mlflow server`), else the local sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()


def local_tracking_uri() -> str:
    """sweeper's own store, here: `sweeps/mlflow.db`."""
    return f"sqlite:///{(SWEEPS_DIR / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """A tracking server that does not answer is bad input, said in seconds, before any data is
    prepared (MLflow's own client would retry for minutes, then chain five tracebacks)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests  # MLflow's own HTTP dependency

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as e:
        raise BadInput(f"MLFLOW_TRACKING_URI={uri}: the tracking server does not answer "
                       f"({type(e).__name__}); start it (mlflow server ...) or unset the variable "
                       f"for the local store") from None


def local_artifact_root() -> str:
    return (SWEEPS_DIR / "mlartifacts").resolve().as_uri()


@dataclass(frozen=True)
class Tracking:
    """Where a sweep's runs live; small and picklable, so it travels to every trial."""
    uri: str
    experiment_id: str
    parent_run_id: str
    # What every trial run carries besides its config: e.g. the FID extractor, a generator's lineage.
    child_tags: tuple = ()
    child_params: tuple = ()

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)


def open_sweep(name: str, uri: str, *, params: dict, tags: dict, child_params: dict = None,
               child_tags: dict = None) -> Tracking:
    """Driver: get or create the sweep's experiment and start its parent run (with the params and
    tags of its children too)."""
    child_params, child_tags = child_params or {}, child_tags or {}
    if uri.startswith("sqlite:"):
        SWEEPS_DIR.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = local_artifact_root() + f"/{name}" if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    # MLflow 3's UI opens an experiment of this kind on its runs view (model training), not on the
    # GenAI traces overview.
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    if uri == local_tracking_uri():
        _drop_empty_default_experiment(client)
    run = client.create_run(experiment_id, run_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={**tags, **child_tags})
    _log_params(client, run.info.run_id, {**params, **child_params})
    return Tracking(uri, experiment_id, run.info.run_id, tuple(child_tags.items()), tuple(child_params.items()))


def _drop_empty_default_experiment(client: MlflowClient) -> None:
    """The store creates a "Default" experiment (id 0) that sweeps never use; in sweeper's own local
    store it only clutters the UI's list. Left alone while it has runs, and on any server."""
    default = client.get_experiment("0")
    if default.lifecycle_stage == "active" and not client.search_runs(["0"], max_results=1, run_view_type=3):
        client.delete_experiment("0")


def reopen_sweep(uri: str, experiment_id: str, parent_run_id: str, *, child_params: dict,
                 child_tags: dict) -> Tracking:
    """Driver, on resume: the sweep's parent run RUNNING again; child runs a dead driver left
    RUNNING are closed KILLED (each trial that goes on reopens its own)."""
    client = MlflowClient(uri)
    client.update_run(parent_run_id, status="RUNNING")
    client.set_tag(parent_run_id, "sweeper.resumed_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
    tracking = Tracking(uri, experiment_id, parent_run_id, tuple(child_tags.items()), tuple(child_params.items()))
    for run_id in child_runs(tracking).values():
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
    return tracking


def drop_lost_trial_runs(tracking: Tracking, known_trial_ids: set) -> int:
    """Delete (MLflow's soft delete) the child runs of trials Tune does not know: a driver killed
    between a trial's start and Tune's next save of its state; on resume the searcher proposes
    that trial again under a new id. Returns how many."""
    lost = [run_id for trial_id, run_id in child_runs(tracking).items() if trial_id not in known_trial_ids]
    for run_id in lost:
        tracking.client().delete_run(run_id)
    return len(lost)


def trial_run_id(tracking: Tracking, trial_id: str, trial_name: str, params: dict,
                 generation: int | None = None) -> str:
    """Trial: its child run, found again by trial id on a retry, created on the first attempt;
    either way with all its params when this returns.

    MLflow creates a run and logs its params in two calls: an attempt that died (or lost the
    answer) in between leaves a run without params, which the next attempt finds by its tag. So
    every lookup logs the params the run lacks; a param already there is left as it is (MLflow
    refuses to change one)."""
    client = tracking.client()
    wanted = {**params, **dict(tracking.child_params)}
    existing = _trial_runs(tracking, trial_id, generation=generation)
    if existing:
        run = existing[0]
        missing = {k: v for k, v in wanted.items() if k not in run.data.params}
        if missing:
            _log_params(client, run.info.run_id, missing)
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    run = client.create_run(tracking.experiment_id, run_name=trial_name, tags={
        **dict(tracking.child_tags), PARENT_TAG: tracking.parent_run_id, TRIAL_TAG: trial_id,
        **({GENERATION_TAG: str(generation)} if generation is not None else {})})
    _log_params(client, run.info.run_id, wanted)
    return run.info.run_id


def generation_run_id(tracking: Tracking, trial_id: str, trial_name: str, params: dict, generation: int,
                      tags: dict) -> tuple[str, list[str]]:
    """Trial of a population (PBT): the child run of its `generation`, found again on a retry or
    created with `tags` (its lineage: sweeper.trial.lineage) and all its params; and the ids of its
    earlier generations' runs still RUNNING, which this one replaces (the caller ends them)."""
    client = tracking.client()
    existing = _trial_runs(tracking, trial_id, generation=generation)
    if existing:
        run_id = trial_run_id(tracking, trial_id, trial_name, params, generation=generation)
    else:
        run = client.create_run(tracking.experiment_id, run_name=f"{trial_name}-g{generation}" if generation else trial_name, tags={
            **dict(tracking.child_tags), PARENT_TAG: tracking.parent_run_id, TRIAL_TAG: trial_id,
            GENERATION_TAG: str(generation), **tags})
        _log_params(client, run.info.run_id, {**params, **dict(tracking.child_params)})
        run_id = run.info.run_id
    earlier = [r.info.run_id for r in _trial_runs(tracking, trial_id, max_results=1000)
               if r.info.run_id != run_id and r.info.status == "RUNNING"
               and int(r.data.tags.get(GENERATION_TAG, 0)) < generation]
    return run_id, earlier


def _trial_runs(tracking: Tracking, trial_id: str, generation: int | None = None, max_results: int = 1) -> list:
    """The trial's child runs, its latest generation's first (a population member has one per
    generation; any other trial one); `generation`: that generation's only."""
    only = f" and tags.`{GENERATION_TAG}` = '{generation}'" if generation is not None else ""
    return tracking.client().search_runs(
        [tracking.experiment_id],
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{tracking.parent_run_id}'{only}",
        max_results=max_results, order_by=["attributes.start_time DESC"])


def end_trial_run(tracking: Tracking, trial_id: str, failed: bool) -> None:
    """Driver, as a trial ends: its run FINISHED (or FAILED) now, so the UI's Duration is the
    trial's; its outcome follows when the sweep ends (`close_trial_runs`, which keeps this end time).
    A trial that failed before it made its run has none to end."""
    for run in _trial_runs(tracking, trial_id):
        tracking.client().set_terminated(run.info.run_id, status="FAILED" if failed else "FINISHED")


def ended_at(tracking: Tracking) -> dict[str, int]:
    """run id -> end time (ms), for every child run already ended."""
    runs = tracking.client().search_runs(
        [tracking.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{tracking.parent_run_id}'",
        max_results=10_000)
    return {r.info.run_id: r.info.end_time for r in runs if r.info.status != "RUNNING" and r.info.end_time}


def child_runs(tracking: Tracking) -> dict[str, str]:
    """trial id -> child run id, for every trial of this sweep (a population member's latest
    generation's)."""
    runs = tracking.client().search_runs(
        [tracking.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{tracking.parent_run_id}'",
        max_results=10_000, order_by=["attributes.start_time ASC"])
    return {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs if TRIAL_TAG in r.data.tags}


def _log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])


__all__ = ["Tracking", "open_sweep", "trial_run_id", "child_runs", "default_tracking_uri"]
