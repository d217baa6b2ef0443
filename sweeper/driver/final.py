"""The final evaluation: the best checkpoint of each of the top trials, measured again.

A trial's best per-eval number is the best of several noisy estimates (few samples, the same z
or the same validation images every eval), so it is biased in its favour, most for the trials
that evaluated most often; the winner by it is partly the luckiest draw. Here the best checkpoints
of the top `FinalEval.top_k` trials of each group (searched / warm-start; real / synthetic data)
are measured once more by the sweep's kind, as Ray tasks with the trials' resources.

**Selected on one draw, reported on another.** Picking the best of k candidates by a noisy number
and reporting that same number reports the minimum of k noisy estimates: biased in the winner's
favour (the winner's curse). So the number that picks is never the number that is reported:

- A kind with a selection draw (`kind.select_metric`; the GAN's `fid_select`) is measured in two
  rounds. Round one: every candidate on the SELECT draw (`shared["final_draw"] = "select"`; a GAN:
  `final_fid_samples` images with z seed `seed + 2,000,003`, against reference statistics of the
  SELECT half of the real images, the half the per-eval FID also uses). Then the best candidate of
  each group by it, and round two: only those on the REPORT draw (`"report"`: other z, `seed +
  1,000,003`, against statistics of the REPORT half, which no selection ever saw), giving the
  kind's `final_metric` (`fid_final`). The sweep's winner is the best by the selection number
  among them (`kind.winner_by`), and its reported `fid_final` is an independent measurement, as is
  each group's (the hand-tuned baseline's comparison). The report round costs one measurement per
  group, not per candidate.
- A kind without one measures every candidate once (`final_metric`) and selects on something
  else: the classifier picks by validation accuracy (`winner_by` = `best_val_acc`), and `test_acc`
  on the held-out test split only reports.

Both numbers are logged on each measured trial's run (at the step of its checkpoint), with the
kind's record of each draw (`final/select_draw.json`, `final/report_draw.json` for a GAN) and the
sample grid the measured checkpoint holds (`final/grid.png`, where the trial drew one): the grid the
parent's top grids show beside the numbers measured on that checkpoint (sweeper.tracking.summary).
"""
from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.fs
import ray
import torch

from sweeper.compat import alive_nodes
from sweeper.driver import resume
from sweeper.driver.resume import SweepState
from sweeper.driver.running import Running
from sweeper.tracking.outcomes import COMPLETED, DIVERGED, STOPPED, finite
from sweeper.tracking.summary import MEASURED_GRID
from trainables.training.checkpoint import GRID_FILE

log = logging.getLogger("sweeper")

SELECT, REPORT = "select", "report"  # the final evaluation's draws, as a kind's `measure` reads them
DRAW = "final_draw"                  # ... from this key of `shared` (absent: REPORT)


@dataclass(frozen=True)
class Candidate:
    """A trial whose best checkpoint the final evaluation measures (and registration logs, if it wins)."""
    trial_id: str
    params: dict      # what the searcher sampled (the trial's Tune config)
    config: object    # the trial's whole validated config
    checkpoint: object  # its best kept tune.Checkpoint
    period: int       # the eval period that checkpoint was reported at


def evaluate(run: Running, table: pd.DataFrame, results,
             state: SweepState | None = None) -> tuple[pd.DataFrame, dict[str, Candidate]]:
    """The kind's final metrics of each candidate's best checkpoint, logged to its run (at the step
    of that checkpoint, with the files the kind made) and added to the table; with the candidates.

    With the sweep's `state`, each part is done once over the sweep's resumes (sweeper.driver.resume):
    numbers measured before the driver stopped are reused, not measured again, and a trial whose
    numbers are logged is not logged again. The candidates themselves are chosen again from Tune's
    results, which no longer change once the trials finished."""
    sweep, kind, inputs = run.sweep, run.kind, run.inputs
    chosen = _chosen(sweep, table, results)
    measured = resume.recorded_measured(state)
    if measured is None:
        print(f"final evaluation: {len(chosen)} best checkpoints measured again ({inputs.measured_on})", flush=True)
        groups = dict(zip(table["trial_id"], table["group"]))
        measured = measure_final({t: (c.config, c.checkpoint) for t, c in chosen.items()}, groups, kind=kind,
                                 shared={**inputs.trial, **inputs.final}, resources=run.per_trial)
        resume.record_measured(state, measured)
    else:
        print(f"final evaluation: {len(measured)} checkpoints' numbers as measured before the driver stopped "
              f"(not measured again)", flush=True)
    table = table.copy()
    for column in filter(None, (kind.select_metric, kind.final_metric, "final_eval_period")):
        table[column] = float("nan")
    table.attrs["final_metrics"] = sorted({key for metrics, _ in measured.values() for key in metrics})
    logged, stamp = list(resume.recorded(state, resume.FINAL_LOGGED) or []), resume.logged_at(state)
    for trial_id, (metrics, files) in measured.items():
        row = table.index[table["trial_id"] == trial_id][0]
        values = {**metrics, "final_eval_period": chosen[trial_id].period}
        for key, value in values.items():
            table.loc[row, key] = value
        if trial_id not in logged:
            _log_measured(run.tracking.client(), table.loc[row, "run_id"], chosen[trial_id].period, values, files,
                          inputs.final_tags, stamp)
            logged.append(trial_id)
            resume.record(state, resume.FINAL_LOGGED, logged)
    return table, chosen


def _chosen(sweep, table: pd.DataFrame, results) -> dict[str, Candidate]:
    """The candidates whose best checkpoint is still there, by trial id."""
    chosen = {}
    for trial_id in candidates(table, sweep.metric, sweep.mode, sweep.final.top_k):
        result = result_of(results, trial_id)
        checkpoint, metrics = best_checkpoint(result, sweep.metric, sweep.mode)
        if checkpoint is not None:
            chosen[trial_id] = Candidate(trial_id, dict(result.config), sweep.trial_config(result.config),
                                         checkpoint, int(metrics["eval_period"]))
    return chosen


def measure_final(jobs: dict, groups: dict, *, kind, shared: dict, resources: dict) -> dict:
    """{trial id: (config, checkpoint)} -> {trial id: (metrics, {file name: bytes})}: with a
    selection draw, every job on it, then the best job of each group (`groups`: trial id -> group)
    by it on the report draw too; without one, every job once (see the module's docstring)."""
    metric = kind.select_metric
    if metric is None:
        return measure(jobs, kind=kind, shared=shared, resources=resources)
    selected = measure(jobs, kind=kind, shared={**shared, DRAW: SELECT}, resources=resources)
    picked = best_of_each_group({t: metrics[metric] for t, (metrics, _) in selected.items()}, groups,
                                kind.final_mode)
    print(f"final evaluation: picked by {metric}, measured again on an independent draw: "
          f"{', '.join(f'{t} ({groups[t]})' for t in picked) or 'none'}", flush=True)
    reported = measure({t: jobs[t] for t in picked}, kind=kind, shared={**shared, DRAW: REPORT}, resources=resources)
    return {t: ({**metrics, **reported.get(t, ({}, {}))[0]}, {**files, **reported.get(t, ({}, {}))[1]})
            for t, (metrics, files) in selected.items()}


def best_of_each_group(values: dict, groups: dict, mode: str) -> list[str]:
    """Trial ids: the best finite value of each group (the first of equals, in `values`' order)."""
    best = {}
    for trial_id, value in values.items():
        if not math.isfinite(value):
            continue
        group = groups[trial_id]
        if group not in best or (value < best[group][1] if mode == "min" else value > best[group][1]):
            best[group] = (trial_id, value)
    return [trial_id for trial_id, _ in best.values()]


def result_of(results, trial_id: str):
    """The Tune result of a trial, by the trial id it reports."""
    return next(r for r in results if r.metrics and r.metrics.get("trial_id") == trial_id)


def _log_measured(client, run_id: str, step: int, metrics: dict, files: dict, tags: dict, timestamp: int) -> None:
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value), timestamp=timestamp, step=step)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if files:
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                (Path(tmp) / name).write_bytes(content)
            client.log_artifacts(run_id, tmp, artifact_path="final")


def candidates(table: pd.DataFrame, metric: str, mode: str, top_k: int) -> list[str]:
    """Trial ids: the top_k trials of each group (the `group` column) by their best per-eval metric."""
    column = f"best_{metric}"
    if column not in table:
        return []
    usable = table[table["outcome"].isin([COMPLETED, STOPPED, DIVERGED]) & finite(table[column])]
    chosen = []
    for _, group in usable.groupby("group", sort=True):
        ranked = group.sort_values(column, ascending=mode == "min", kind="stable")
        chosen += ranked["trial_id"].head(top_k).tolist()
    return chosen


def best_checkpoint(result, metric: str, mode: str):
    """(checkpoint, the metrics it was reported with) of a trial's best kept checkpoint."""
    # A resumed trial's record can name a checkpoint Tune deleted just before its driver was killed.
    kept = [(c, m) for c, m in result.best_checkpoints if math.isfinite(m.get(metric, math.nan))
            and c.filesystem.get_file_info(c.path).type == pyarrow.fs.FileType.Directory]
    if not kept:
        return None, None
    return (min if mode == "min" else max)(kept, key=lambda cm: cm[1][metric])


def measure(jobs: dict, *, kind, shared: dict, resources: dict) -> dict:
    """{trial id: (config, checkpoint)} -> {trial id: (metrics, {file name: bytes})}, in parallel
    Ray tasks, each with one trial's resources (so they pack onto GPUs like the trials did; without
    GPUs, its share of the node's CPUs: `task_resources`). A task that fails is logged and left out."""
    shared_ref = ray.put(shared)
    largest_node = max((node.cpus for node in alive_nodes(ray.nodes())), default=0)
    resources = task_resources(resources, len(jobs), largest_node)
    # max_calls=1: each worker exits after its checkpoint, so no idle worker keeps GPU memory.
    remote = ray.remote(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0), max_retries=1,
                        max_calls=1)(_measure_checkpoint)
    futures = {trial_id: remote.remote(kind, cfg, checkpoint, shared_ref, resources.get("cpu", 1))
               for trial_id, (cfg, checkpoint) in jobs.items()}
    measured = {}
    for trial_id, future in futures.items():
        try:
            measured[trial_id] = ray.get(future)
        except ray.exceptions.RayError as e:  # one broken checkpoint must not cost the sweep its winner
            log.warning("final evaluation of trial %s failed, left out: %s", trial_id, str(e).splitlines()[0])
    return measured


def task_resources(per_trial: dict, n_jobs: int, largest_node_cpus: float) -> dict:
    """One final-evaluation task's resources: a trial's where it gets a GPU (the tasks pack onto GPUs
    like the trials); without one, the largest node's CPUs shared out among the `n_jobs` tasks, never
    fewer than a trial's. Nothing else runs then, and a task's CPUs are its torch threads: on a 2-core
    machine the report draw's single job ran the Inception on one thread beside an idle core."""
    if per_trial.get("gpu") or n_jobs < 1:
        return per_trial
    share = int(largest_node_cpus // n_jobs)
    return {**per_trial, "cpu": max(per_trial.get("cpu", 1), share)}


def _measure_checkpoint(kind, cfg, checkpoint, shared: dict, cpus: float) -> tuple[dict, dict]:
    torch.set_num_threads(max(1, int(cpus)))  # its share of the node (task_resources)
    with checkpoint.as_directory() as directory:
        metrics, files = kind.measure(cfg, directory, shared)
        return metrics, {**files, **checkpoint_grid(directory)}


def checkpoint_grid(directory) -> dict[str, bytes]:
    """{MEASURED_GRID: the PNG} of the sample grid a checkpoint holds (drawn from its generator
    with the trial's fixed z when it was saved), or {} for a checkpoint without one (a classifier's)."""
    path = Path(directory) / GRID_FILE
    return {MEASURED_GRID: path.read_bytes()} if path.is_file() else {}


def winner(table: pd.DataFrame, column: str, mode: str, measured: str | None) -> str | None:
    """The trial with the best finite `column` among those with a finite `measured` value (all
    finished trials when `measured` is None), or None. The driver passes the kind's `winner_by`
    column (a selection number: `fid_select`, `best_val_acc`) and its `final_metric` as `measured`,
    so the winner is chosen among the reported trials by a number independent of the reported one."""
    if column not in table or (measured is not None and measured not in table):
        return None
    rows = table[finite(table[column])]
    if measured is not None:
        rows = rows[finite(rows[measured])]
    else:
        rows = rows[rows["outcome"].isin([COMPLETED, STOPPED])]
    if rows.empty:
        return None
    return str(rows.sort_values(column, ascending=mode == "min", kind="stable")["trial_id"].iloc[0])
