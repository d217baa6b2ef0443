"""The final evaluation: the best checkpoint of each of the top trials, measured again.

A trial's best per-eval FID is the minimum of several noisy estimates (few samples, the same z
every eval), so it is biased low, most for the trials that evaluated most often; the winner by it
is partly the luckiest draw. Here the best checkpoints of the top `FinalEval.top_k` searched and
`top_k` warm-start trials are measured once more on `final_fid_samples` images with another seed,
with the standard extractor, as Ray tasks with the trials' resources; `fid_final` picks the winner
and compares the search with the hand-tuned baseline.
"""
from __future__ import annotations

import logging
import math

import pandas as pd
import ray
import torch

from sweeper.outcomes import COMPLETED, DIVERGED, STOPPED, finite
from trainables.metrics import extractor_by_name
from trainables.training.evaluate import final_fid_kid
from trainables.training.gan import resolve_device

log = logging.getLogger("sweeper")


def candidates(table: pd.DataFrame, metric: str, mode: str, top_k: int) -> list[str]:
    """Trial ids: the top_k searched and the top_k warm-start trials by their best per-eval metric."""
    column = f"best_{metric}"
    if column not in table:
        return []
    usable = table[table["outcome"].isin([COMPLETED, STOPPED, DIVERGED]) & finite(table[column])]
    chosen = []
    for _, group in usable.groupby("warm_start"):
        ranked = group.sort_values(column, ascending=mode == "min", kind="stable")
        chosen += ranked["trial_id"].head(top_k).tolist()
    return chosen


def best_checkpoint(result, metric: str, mode: str):
    """(checkpoint, the metrics it was reported with) of a trial's best kept checkpoint."""
    kept = [(c, m) for c, m in result.best_checkpoints if math.isfinite(m.get(metric, math.nan))]
    if not kept:
        return None, None
    return (min if mode == "min" else max)(kept, key=lambda cm: cm[1][metric])


def measure(jobs: dict, *, extractor: str, weights_path: str | None, ref_stats, resources: dict) -> dict:
    """{trial id: (config, checkpoint)} -> {trial id: {"fid_final", "kid_final"}}, in parallel Ray
    tasks, each with one trial's resources (so they pack onto GPUs like the trials did). A task that
    fails is logged and left out."""
    ref = ray.put(ref_stats)
    task = ray.remote(_measure_checkpoint).options(
        num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0), max_retries=1)
    futures = {trial_id: task.remote(cfg, checkpoint, extractor, weights_path, ref, resources.get("cpu", 1))
               for trial_id, (cfg, checkpoint) in jobs.items()}
    measured = {}
    for trial_id, future in futures.items():
        try:
            measured[trial_id] = ray.get(future)
        except ray.exceptions.RayError as e:  # one broken checkpoint must not cost the sweep its winner
            log.warning("final evaluation of trial %s failed, left out: %s", trial_id, str(e).splitlines()[0])
    return measured


def _measure_checkpoint(cfg, checkpoint, extractor: str, weights_path, ref_stats, cpus: float) -> dict:
    torch.set_num_threads(max(1, int(cpus)))  # packed beside others, like a trial
    features = extractor_by_name(extractor, resolve_device(cfg.device), weights_path=weights_path)
    with checkpoint.as_directory() as directory:
        return final_fid_kid(cfg, directory, features, ref_stats)


def winner(table: pd.DataFrame) -> str | None:
    """The trial with the lowest finite `fid_final`, or None when nothing was measured."""
    if "fid_final" not in table:
        return None
    measured = table[finite(table["fid_final"])]
    if measured.empty:
        return None
    ranked = measured.sort_values("fid_final", kind="stable")
    return str(ranked["trial_id"].iloc[0])
