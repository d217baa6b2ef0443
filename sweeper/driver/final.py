"""The final evaluation: the best checkpoint of each of the top trials, measured again.

A trial's best per-eval number is the best of several noisy estimates (few samples, the same z
or the same validation images every eval), so it is biased in its favour, most for the trials
that evaluated most often; the winner by it is partly the luckiest draw. Here the best checkpoints
of the top `FinalEval.top_k` trials of each group (searched / warm-start; real / synthetic data)
are measured once more by the sweep's kind (a GAN: `fid_final` on more samples with another seed
and the standard extractor; a classifier: `test_acc` on the held-out test split), as Ray tasks
with the trials' resources.
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

from sweeper.driver.running import Running
from sweeper.tracking.outcomes import COMPLETED, DIVERGED, STOPPED, finite

log = logging.getLogger("sweeper")


@dataclass(frozen=True)
class Candidate:
    """A trial whose best checkpoint the final evaluation measures (and registration logs, if it wins)."""
    trial_id: str
    params: dict      # what the searcher sampled (the trial's Tune config)
    config: object    # the trial's whole validated config
    checkpoint: object  # its best kept tune.Checkpoint
    period: int       # the eval period that checkpoint was reported at


def evaluate(run: Running, table: pd.DataFrame, results) -> tuple[pd.DataFrame, dict[str, Candidate]]:
    """The kind's final metrics of each candidate's best checkpoint, logged to its run (at the step
    of that checkpoint, with the files the kind made) and added to the table; with the candidates."""
    sweep, kind, inputs = run.sweep, run.kind, run.inputs
    chosen = {}
    for trial_id in candidates(table, sweep.metric, sweep.mode, sweep.final.top_k):
        result = result_of(results, trial_id)
        checkpoint, metrics = best_checkpoint(result, sweep.metric, sweep.mode)
        if checkpoint is not None:
            chosen[trial_id] = Candidate(trial_id, dict(result.config), sweep.trial_config(result.config),
                                         checkpoint, int(metrics["eval_period"]))
    print(f"final evaluation: {len(chosen)} best checkpoints measured again ({inputs.measured_on})", flush=True)
    measured = measure({t: (c.config, c.checkpoint) for t, c in chosen.items()}, kind=kind,
                       shared={**inputs.trial, **inputs.final}, resources=run.per_trial)
    table = table.copy()
    table[kind.final_metric] = float("nan")
    table["final_eval_period"] = float("nan")
    table.attrs["final_metrics"] = sorted({key for metrics, _ in measured.values() for key in metrics})
    for trial_id, (metrics, files) in measured.items():
        row = table.index[table["trial_id"] == trial_id][0]
        values = {**metrics, "final_eval_period": chosen[trial_id].period}
        for key, value in values.items():
            table.loc[row, key] = value
        _log_measured(run.tracking.client(), table.loc[row, "run_id"], chosen[trial_id].period, values, files,
                      inputs.final_tags)
    return table, chosen


def result_of(results, trial_id: str):
    """The Tune result of a trial, by the trial id it reports."""
    return next(r for r in results if r.metrics and r.metrics.get("trial_id") == trial_id)


def _log_measured(client, run_id: str, step: int, metrics: dict, files: dict, tags: dict) -> None:
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value), step=step)
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
    Ray tasks, each with one trial's resources (so they pack onto GPUs like the trials did). A task
    that fails is logged and left out."""
    shared_ref = ray.put(shared)
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


def _measure_checkpoint(kind, cfg, checkpoint, shared: dict, cpus: float) -> tuple[dict, dict]:
    torch.set_num_threads(max(1, int(cpus)))  # packed beside others, like a trial
    with checkpoint.as_directory() as directory:
        return kind.measure(cfg, directory, shared)


def winner(table: pd.DataFrame, column: str, mode: str, measured: str | None) -> str | None:
    """The trial with the best finite `column` among those with a finite `measured` value (all
    finished trials when `measured` is None), or None."""
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
