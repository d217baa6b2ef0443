"""Driver: the eval periods a trial could not deliver before it ended, delivered to its run.

A trial delivers its own periods (sweeper.trial.delivery) while it runs and, when its trainable
returns, waits for the server. A trial that ends otherwise while MLflow is unreachable, stopped
by ASHA, paused by the promotion scheduler and never resumed (its process ends inside
`tune.report`), failed for good, leaves its undelivered periods in its spool and its latest
checkpoint. `deliver_leftovers` delivers them, exactly once, and says so: one line per trial.

Decisions:
- When `Tuner.fit()` has returned, not in a Tune callback: `on_trial_complete` runs before Tune
  stops the trial's actor (a trial still in its last flush would race the driver and log a step
  twice), and a paused trial gets no hook until the sweep ends. After `fit()` no trial of the
  sweep runs, and a resumed sweep's `fit()` returns every trial, those of earlier runs included.
- On the node the trial last ran on (the `node_ip` of its last result), as a Ray task of 0 CPUs
  with soft node affinity: its spool is on that node's disk. Where the node is gone, the task
  runs elsewhere and delivers what the trial's latest checkpoint carries (its spool as of its
  last checkpoint), downloaded from the sweep's storage, spool folder only.
- One task per node for all its trials (a task per trial cost ~0.2 s each, minutes for a 1,000-
  trial sweep), nodes at once; on a node one trial after the other (two deliverers of one run
  could each send a step), all within one deadline (`timeout_s`), so a server that stays down
  delays the end of the sweep, not forever.
"""
from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sweeper.compat import alive_nodes
from sweeper.tracking.runs import Tracking, child_runs
from sweeper.trial.checkpoints import surviving_checkpoint
from sweeper.trial.delivery import SPOOL_IN_CHECKPOINT, RunLog, retrying, spooled_steps, trial_spool

log = logging.getLogger("sweeper")

DELIVERY_TIMEOUT_S = 600.0


def deliver_leftovers(tracking: Tracking, results, *, timeout_s: float = DELIVERY_TIMEOUT_S) -> list[str]:
    """Every ended trial's undelivered eval periods into its MLflow run; returns a console line
    per trial that had any (delivered late, or still not delivered and why)."""
    deadline = time.monotonic() + timeout_s
    runs = retrying(lambda: child_runs(tracking), "list the trials' runs", timeout_s=timeout_s)
    nodes = _alive_nodes()
    by_node: dict[str | None, list[tuple]] = {}  # one task per node, not per trial: a 1,000-trial sweep
    for result in results:
        if not result.path:
            continue
        experiment, trial_id = posixpath.split(posixpath.normpath(result.path))
        run_id = runs.get(trial_id)
        if run_id is None:
            continue  # it never opened its run, so it spooled nothing
        node_id = nodes.get((result.metrics or {}).get("node_ip"))
        by_node.setdefault(node_id, []).append((run_id, posixpath.basename(experiment), trial_id, result.checkpoint))
    tasks = []
    for node_id, trials in by_node.items():
        task = _on_a_node
        if node_id is not None:
            task = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True))
        tasks.append((trials, task.remote(tracking, trials, max(1.0, deadline - time.monotonic()))))
    lines = []
    for trials, task in tasks:
        try:
            outcomes = ray.get(task)
        except Exception as e:  # noqa: BLE001  one node's leftovers must not end the sweep
            why = _why(getattr(e, "cause", None) or e)  # a RayTaskError's cause
            outcomes = [(0, -1, why)] * len(trials)
        for (run_id, _, trial_id, _), (sent, left, why) in zip(trials, outcomes):
            lines += _said(trial_id, run_id, sent, left, why)
    return lines


def deliver_node_leftovers(tracking: Tracking, trials: list[tuple], timeout_s: float) -> list[tuple[int, int, str]]:
    """On a node: each of its trials' leftovers (`deliver_trial_leftovers`), one trial after the
    other, within one deadline; an outcome per trial, in order."""
    deadline = time.monotonic() + timeout_s
    outcomes = []
    for run_id, experiment, trial_id, checkpoint in trials:
        try:
            outcomes.append(deliver_trial_leftovers(tracking, run_id, experiment, trial_id, checkpoint,
                                                    max(1.0, deadline - time.monotonic())))
        except Exception as e:  # noqa: BLE001  one trial's leftovers must not keep the next one's back
            outcomes.append((0, -1, _why(e)))
    return outcomes


def deliver_trial_leftovers(tracking: Tracking, run_id: str, experiment: str, trial_id: str,
                            checkpoint, timeout_s: float) -> tuple[int, int, str]:
    """A trial's spool and its checkpoint's, delivered. Returns (steps delivered, steps still
    undelivered, why)."""
    # As in a trial: a failed call fails fast, and RunLog retries it with backoff until timeout_s.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "20"
    deadline = time.monotonic() + timeout_s
    spool = trial_spool(experiment, trial_id)
    with tempfile.TemporaryDirectory(prefix="sweeper-carried-") as carried:  # mode 0700
        has_carried = _download_carried(surviving_checkpoint(checkpoint), Path(carried))
        if not spooled_steps(spool) and not has_carried:
            shutil.rmtree(spool, ignore_errors=True)
            return 0, 0, ""
        try:
            run_log = RunLog(tracking, run_id, spool, open_timeout_s=timeout_s)
        except Exception as e:  # noqa: BLE001  the store stayed unreachable
            return 0, len(set(spooled_steps(spool)) | set(spooled_steps(Path(carried) / SPOOL_IN_CHECKPOINT))), _why(e)
        run_log.adopt(Path(carried))
        done = run_log.flush(wait=True, timeout_s=max(0.0, deadline - time.monotonic()))
    if done:
        shutil.rmtree(spool, ignore_errors=True)
        return run_log.sent, 0, ""
    return run_log.sent, len(run_log.pending()), "MLflow unreachable"


def _download_carried(checkpoint, into: Path) -> bool:
    """The spool folder of a checkpoint (local or in s3://, gs:// storage) copied into
    `into/mlflow_spool`; False where it has none."""
    if checkpoint is None:
        return False
    fs, folder = checkpoint.filesystem, posixpath.join(checkpoint.path, SPOOL_IN_CHECKPOINT)
    files = [info for info in fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
             if info.type == pyarrow.fs.FileType.File]
    (into / SPOOL_IN_CHECKPOINT).mkdir()
    for info in files:
        with fs.open_input_stream(info.path) as source:
            (into / SPOOL_IN_CHECKPOINT / info.base_name).write_bytes(source.read())
    return bool(spooled_steps(into / SPOOL_IN_CHECKPOINT))


_on_a_node = ray.remote(num_cpus=0, max_retries=0)(deliver_node_leftovers)


def _alive_nodes() -> dict[str, str]:
    """IP address -> an alive Ray node there (nodes sharing an address share its disk)."""
    return {node.address: node.node_id for node in alive_nodes(ray.nodes())}


def _said(trial_id: str, run_id: str, sent: int, left: int, why: str) -> list[str]:
    lines = []
    if sent:
        lines.append(f"trial {trial_id}: {sent} eval period(s) it could not deliver before it ended "
                     f"delivered late to its MLflow run {run_id}")
    if left:
        count = "its undelivered eval periods" if left < 0 else f"{left} eval period(s)"
        lines.append(f"trial {trial_id}: {count} not delivered to its MLflow run {run_id} ({why}); they stay "
                     f"in its spool on its node and in its latest checkpoint's {SPOOL_IN_CHECKPOINT}/ folder")
    return lines


def _why(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}" if str(error) else type(error).__name__
