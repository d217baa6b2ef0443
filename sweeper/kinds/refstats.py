"""FID (and KID) reference statistics of the real data: computed once per sweep, cached by content.

A sweep computes them in a Ray task with a trial's resources (`reference_stats_in_task`), so the
driver never loads the feature network onto a GPU of its own, outside Ray's accounting, for the
whole sweep; `reference_stats` is the same computation in the calling process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import ray
import torch

from trainables.cache import atomic_writer, content_key
from trainables.metrics import cache_dir, extract, feature_stats

_FORMAT = 2  # bump when what is stored (or how it is computed) changes, so old entries are ignored
KID_FEATURES = 2000  # real features kept for KID (an MMD needs samples, not moments)


@dataclass(frozen=True, eq=False)
class RefStats:
    """What a trial needs to score FID against the real data, plus where it came from.

    `key` names the cache entry; `cache_hit` says whether this call computed nothing.
    """

    mu: np.ndarray  # float64 [D]
    sigma: np.ndarray  # float64 [D, D]
    features: np.ndarray  # float32 [<= KID_FEATURES, D]: a seeded subset of the real features, for KID
    extractor_name: str
    n_samples: int  # images actually used (the request capped at the dataset size)
    key: str
    cache_hit: bool = False
    computed_in: int | None = None  # pid of the process that ran the extractor; None on a cache hit


class ExtractorRecipe(Protocol):
    """What a Ray task needs to build an extractor on its own node and device."""
    name: str
    dims: int
    precision: str

    def build(self): ...


def refstats_key(fingerprint: str, resolution: tuple[int, int], extractor_name: str, n_samples: int, seed: int,
                 precision: str = "fp32") -> str:
    """sha256 over the content that determines the statistics, never over a path."""
    fields = {"format": _FORMAT, "fingerprint": fingerprint, "resolution": list(resolution),
              "extractor": extractor_name, "n_samples": n_samples, "seed": seed}
    if precision != "fp32":  # only then, so entries written before precision was a setting stay valid
        fields["precision"] = precision
    return content_key(fields)


def reference_stats(images: np.ndarray, fingerprint: str, extractor, n_samples: int, seed: int = 0) -> RefStats:
    """Mean and covariance of `extractor` features of up to `n_samples` real images (uint8 NCHW).

    Uses every image when n_samples >= len(images), else a subset drawn with `seed`. Cached at
    <cache>/refstats/<key>.npz; an unreadable or mismatched entry is recomputed and replaced.
    """
    n, key, path, cached = _lookup(images, fingerprint, extractor, n_samples, seed)
    if cached is not None:
        return cached
    mu, sigma, features = _compute(extractor, _subset(images, n, seed), seed)
    _save_atomic(path, mu=mu, sigma=sigma, features=features, key=np.array(key))
    return RefStats(mu, sigma, features, extractor.name, n, key, computed_in=os.getpid())


def reference_stats_in_task(images: np.ndarray, fingerprint: str, recipe: ExtractorRecipe, n_samples: int, *,
                            resources: dict, seed: int = 0) -> RefStats:
    """`reference_stats`, but a miss is computed in a Ray task with `resources` ({"cpu": n, "gpu":
    fraction}; see `pass_resources`) that builds the extractor from `recipe` on its own device; only
    the chosen images go to it. A hit reads the cache file and starts nothing. The driver writes the
    cache entry (the task may run on a node without the driver's cache)."""
    n, key, path, cached = _lookup(images, fingerprint, recipe, n_samples, seed)
    if cached is not None:
        return cached
    cpus = resources.get("cpu", 1)
    # max_calls=1: the worker exits after the task, so the network's GPU memory (and the CUDA
    # context) is released before the trials start rather than kept by an idle pooled worker.
    task = ray.remote(num_cpus=cpus, num_gpus=resources.get("gpu", 0), max_calls=1, max_retries=1)(_compute_in_task)
    mu, sigma, features, pid = ray.get(task.remote(recipe, _subset(images, n, seed), seed, cpus))
    _save_atomic(path, mu=mu, sigma=sigma, features=features, key=np.array(key))
    return RefStats(mu, sigma, features, recipe.name, n, key, computed_in=pid)


def pass_resources(trial: dict) -> dict:
    """The reference pass's resources, given a trial's: the same where it gets a GPU (so it packs like
    a trial and the driver pins none); without one, all the CPUs of the largest node, since it runs
    before any trial starts (on a trial's one CPU, one thread, Inception made the pass most of a
    2-core quick sweep's time)."""
    if trial.get("gpu"):
        return trial
    return {"cpu": max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0) or 1}


def _lookup(images: np.ndarray, fingerprint: str, extractor, n_samples: int, seed: int):
    """(images to use, cache key, cache path, the cached RefStats or None)."""
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"reference images must be uint8 [N>=2, 3, H, W], got shape {images.shape}")
    n = min(int(n_samples), len(images))
    precision = getattr(extractor, "precision", "fp32")
    key = refstats_key(fingerprint, tuple(images.shape[2:]), extractor.name, n, seed, precision)
    path = cache_dir() / "refstats" / f"{key}.npz"
    cached = _load(path, key, extractor.dims)
    return n, key, path, None if cached is None else RefStats(*cached, extractor.name, n, key, cache_hit=True)


def _compute(extractor, images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, sigma, KID's seeded subset of the features as float32); `extract` goes batch by batch."""
    feats = extract(extractor, images, progress=f"reference statistics ({extractor.name}, {len(images)} images)")
    mu, sigma = feature_stats(feats)
    keep = np.sort(np.random.default_rng(seed).permutation(len(feats))[:KID_FEATURES])
    return mu, sigma, feats[keep].astype(np.float32)


def _compute_in_task(recipe: ExtractorRecipe, images: np.ndarray, seed: int, cpus: float):
    torch.set_num_threads(max(1, int(cpus)))  # its share of the node, like a trial
    return (*_compute(recipe.build(), images, seed), os.getpid())


def _subset(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    if n == len(images):
        return images
    # Sorted so the extractor reads the images in storage order (cache-friendly on a memmap).
    indices = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
    return images[indices]


def _load(path: Path, key: str, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as entry:
            mu, sigma, features, stored_key = entry["mu"], entry["sigma"], entry["features"], str(entry["key"])
    except Exception:  # missing, truncated or foreign files fail in many ways; all mean recompute
        return None
    if stored_key != key or mu.shape != (dims,) or sigma.shape != (dims, dims) or features.shape[1:] != (dims,):
        return None
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all() and np.isfinite(features).all()):
        return None
    return mu, sigma, features


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    # A concurrent driver sees either no file or the whole file, and two drivers racing both write
    # identical content, so either wins.
    with atomic_writer(path) as out:
        np.savez(out, **arrays)
