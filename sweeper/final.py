"""The final evaluation: the best checkpoint of each of the top trials, measured again.

A trial's best per-eval number is the best of several noisy estimates (few samples, the same z
or the same validation images every eval), so it is biased in its favour, most for the trials
that evaluated most often; the winner by it is partly the luckiest draw. Here the best checkpoints
of the top `FinalEval.top_k` trials of each group (searched / warm-start; real / synthetic data)
are measured once more by the sweep's Task (a GAN: `fid_final` on more samples with another seed
and the standard extractor; a classifier: `test_acc` on the held-out test split), as Ray tasks
with the trials' resources.
"""
from __future__ import annotations

import logging
import math

import pandas as pd
import pyarrow.fs
import ray
import torch

from sweeper.outcomes import COMPLETED, DIVERGED, STOPPED, finite

log = logging.getLogger("sweeper")


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


def measure(jobs: dict, *, task, shared: dict, resources: dict) -> dict:
    """{trial id: (config, checkpoint)} -> {trial id: (metrics, {file name: bytes})}, in parallel
    Ray tasks, each with one trial's resources (so they pack onto GPUs like the trials did). A task
    that fails is logged and left out."""
    shared_ref = ray.put(shared)
    # max_calls=1: each worker exits after its checkpoint, so no idle worker keeps GPU memory.
    remote = ray.remote(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0), max_retries=1,
                        max_calls=1)(_measure_checkpoint)
    futures = {trial_id: remote.remote(task, cfg, checkpoint, shared_ref, resources.get("cpu", 1))
               for trial_id, (cfg, checkpoint) in jobs.items()}
    measured = {}
    for trial_id, future in futures.items():
        try:
            measured[trial_id] = ray.get(future)
        except ray.exceptions.RayError as e:  # one broken checkpoint must not cost the sweep its winner
            log.warning("final evaluation of trial %s failed, left out: %s", trial_id, str(e).splitlines()[0])
    return measured


def _measure_checkpoint(task, cfg, checkpoint, shared: dict, cpus: float) -> tuple[dict, dict]:
    torch.set_num_threads(max(1, int(cpus)))  # packed beside others, like a trial
    with checkpoint.as_directory() as directory:
        return task.measure(cfg, directory, shared)


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
