"""FID (and KID) reference statistics of the real data: computed once per sweep, cached by content.

A sweep computes them in one Ray task with a trial's resources (`reference_stats_in_one_task`), so the
driver never loads the feature network onto a GPU of its own, outside Ray's accounting, for the
whole sweep; `reference_stats` is the same computation in the calling process.

**Two disjoint halves.** The real images split once, by a fixed seeded permutation of their
indices (`half_indices`), into a SELECT half and a REPORT half. Everything that chooses (the
per-eval FID that ASHA, TPE and the best checkpoints go by; `fid_select`, which picks the final
winner) is measured against statistics of the SELECT half; the winner's reported `fid_final` against
statistics of the REPORT half, so no real image that helped choose it is in the number it reports.
Each half's statistics are a cache entry of their own (the half is part of the content key).

**Checked on every use.** An entry holds, besides its arrays, the sha256 of their bytes (a `sha256`
member of the .npz, written in the same atomic rename); every load hashes the arrays it read again
(trainables.cache.cached_entry). A damaged entry (cut short, other bytes, a directory in its place,
or one written before entries carried a sha256) is computed again with a one-line warning.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import ray
import torch

from sweeper.compat import alive_nodes
from trainables.cache import DamagedEntry, atomic_writer, cached_entry, check_digest, content_key
from trainables.metrics import cache_dir, extract, feature_stats

_FORMAT = 2  # bump when what is stored (or how it is computed) changes, so old entries are ignored
KID_FEATURES = 2000  # real features kept for KID (an MMD needs samples, not moments)
SELECT, REPORT = "select", "report"  # the halves of the real images (see the module's docstring)
_SPLIT = 1  # bump when `half_indices` changes, so entries of the old halves are ignored
_SPLIT_SEED = 20_240_607  # fixed: the halves depend only on the number of images (and _SPLIT)
MIN_TO_SPLIT = 4  # two halves of at least 2 images (a covariance each); fewer: both halves are all of them


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
    half: str | None = None  # SELECT or REPORT: which half of the real images; None: all of them
    indices: np.ndarray | None = None  # the images used, as sorted indices into the whole set


class ExtractorRecipe(Protocol):
    """What a Ray task needs to build an extractor on its own node and device."""
    name: str
    dims: int
    precision: str
    weights_sha256: str | None  # full sha256 of the weights file; None: the extractor has none

    def build(self): ...


def refstats_key(fingerprint: str, resolution: tuple[int, int], extractor_name: str, n_samples: int, seed: int,
                 precision: str = "fp32", half: str | None = None, weights_sha256: str | None = None) -> str:
    """sha256 over the content that determines the statistics, never over a path: the extractor is
    its name, its precision and the full sha256 of its weights file (two same-shaped files under one
    name are other features)."""
    fields = {"format": _FORMAT, "fingerprint": fingerprint, "resolution": list(resolution),
              "extractor": extractor_name, "n_samples": n_samples, "seed": seed}
    if precision != "fp32":  # only then, so entries written before precision was a setting stay valid
        fields["precision"] = precision
    if weights_sha256 is not None:  # an extractor without a weights file (random conv) keeps its keys
        fields["weights_sha256"] = weights_sha256
    if half is not None:  # likewise: the whole set's entries keep their keys
        fields["half"], fields["split"] = half, _SPLIT
    return content_key(fields)


def half_indices(n_images: int, half: str | None) -> np.ndarray:
    """Sorted indices of the images in `half` of a set of `n_images`: a permutation drawn with a
    fixed seed, its first n // 2 entries the SELECT half, the other n - n // 2 the REPORT half, so
    the two never share an image. None, or a set too small to split (< MIN_TO_SPLIT): every image."""
    if half is None or n_images < MIN_TO_SPLIT:
        return np.arange(n_images)
    if half not in (SELECT, REPORT):
        raise ValueError(f"half must be {SELECT!r}, {REPORT!r} or None, got {half!r}")
    order = np.random.default_rng(_SPLIT_SEED).permutation(n_images)
    return np.sort(order[:n_images // 2] if half == SELECT else order[n_images // 2:])


def reference_stats(images: np.ndarray, fingerprint: str, extractor, n_samples: int, seed: int = 0, *,
                    half: str | None = None) -> RefStats:
    """Mean and covariance of `extractor` features of up to `n_samples` real images (uint8 NCHW) of
    `half` of them (SELECT, REPORT; None: all, see `half_indices`).

    Uses every image of the half when n_samples >= its size, else a subset drawn with `seed`. Cached
    at <cache>/refstats/<key>.npz; a damaged entry is recomputed and replaced, with a warning.
    """
    chosen, key, path, cached = _lookup(images, fingerprint, extractor, n_samples, seed, half)
    if cached is not None:
        return cached
    mu, sigma, features = _compute(extractor, _take(images, chosen), seed)
    _save_atomic(path, mu=mu, sigma=sigma, features=features, key=np.array(key))
    return RefStats(mu, sigma, features, extractor.name, len(chosen), key, computed_in=os.getpid(), half=half,
                    indices=chosen)


def reference_stats_in_task(images: np.ndarray, fingerprint: str, recipe: ExtractorRecipe, n_samples: int, *,
                            resources: dict, seed: int = 0, half: str | None = None) -> RefStats:
    """`reference_stats`, but a miss is computed in a Ray task with `resources` ({"cpu": n, "gpu":
    fraction}; see `pass_resources`) that builds the extractor from `recipe` on its own device; only
    the chosen images go to it. A hit reads the cache file and starts nothing. The driver writes the
    cache entry (the task may run on a node without the driver's cache)."""
    return reference_stats_in_one_task(images, fingerprint, [(recipe, n_samples, half)], resources=resources,
                                       seed=seed)[0]


def reference_stats_in_one_task(images: np.ndarray, fingerprint: str, requests: list, *, resources: dict,
                                seed: int = 0) -> list[RefStats]:
    """`reference_stats_in_task` for several (recipe, n_samples, half) requests, in request order:
    the misses all in one Ray task (a task's start, imports and network loading cost about as much
    as a pass over a few hundred images on a CPU)."""
    lookups = [_lookup(images, fingerprint, recipe, n_samples, seed, half) for recipe, n_samples, half in requests]
    missing = [i for i, (_, _, _, cached) in enumerate(lookups) if cached is None]
    if missing:
        cpus = resources.get("cpu", 1)
        # max_calls=1: the worker exits after the task, so the network's GPU memory (and the CUDA
        # context) is released before the trials start rather than kept by an idle pooled worker.
        task = ray.remote(num_cpus=cpus, num_gpus=resources.get("gpu", 0), max_calls=1,
                          max_retries=1)(_compute_in_task)
        jobs = [(requests[i][0], _take(images, lookups[i][0])) for i in missing]
        computed, pid = ray.get(task.remote(jobs, seed, cpus))
        for i, (mu, sigma, features) in zip(missing, computed):
            chosen, key, path, _ = lookups[i]
            _save_atomic(path, mu=mu, sigma=sigma, features=features, key=np.array(key))
            recipe, _, half = requests[i]
            lookups[i] = (chosen, key, path, RefStats(mu, sigma, features, recipe.name, len(chosen), key,
                                                      computed_in=pid, half=half, indices=chosen))
    return [cached for _, _, _, cached in lookups]


def pass_resources(trial: dict) -> dict:
    """The reference pass's resources, given a trial's: the same where it gets a GPU (so it packs like
    a trial and the driver pins none); without one, all the CPUs of the largest node, since it runs
    before any trial starts (on a trial's one CPU, one thread, Inception made the pass most of a
    2-core quick sweep's time)."""
    if trial.get("gpu"):
        return trial
    return {"cpu": max((node.cpus for node in alive_nodes(ray.nodes())), default=0) or 1}


def _lookup(images: np.ndarray, fingerprint: str, extractor, n_samples: int, seed: int, half: str | None):
    """(indices of the images to use, cache key, cache path, the cached RefStats or None)."""
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"reference images must be uint8 [N>=2, 3, H, W], got shape {images.shape}")
    chosen = _subset(half_indices(len(images), half), int(n_samples), seed)
    precision, weights = getattr(extractor, "precision", "fp32"), getattr(extractor, "weights_sha256", None)
    key = refstats_key(fingerprint, tuple(images.shape[2:]), extractor.name, len(chosen), seed, precision, half,
                       weights)
    path = cache_dir() / "refstats" / f"{key}.npz"
    cached = cached_entry(path, lambda entry: _load(entry, key, extractor.dims), "reference statistics",
                          "computing them again")
    return chosen, key, path, None if cached is None else RefStats(
        *cached, extractor.name, len(chosen), key, cache_hit=True, half=half, indices=chosen)


def _compute(extractor, images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, sigma, KID's seeded subset of the features as float32); `extract` goes batch by batch."""
    feats = extract(extractor, images, progress=f"reference statistics ({extractor.name}, {len(images)} images)")
    mu, sigma = feature_stats(feats)
    keep = np.sort(np.random.default_rng(seed).permutation(len(feats))[:KID_FEATURES])
    return mu, sigma, feats[keep].astype(np.float32)


def _compute_in_task(jobs: list, seed: int, cpus: float):
    """([(mu, sigma, features) of each (recipe, images) job], this process's pid)."""
    torch.set_num_threads(max(1, int(cpus)))  # its share of the node, like a trial
    return [_compute(recipe.build(), images, seed) for recipe, images in jobs], os.getpid()


def _subset(pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to n of the (sorted) indices in `pool`: all of them, or a sorted subset drawn with `seed`."""
    if n >= len(pool):
        return pool
    # Sorted so the extractor reads the images in storage order (cache-friendly on a memmap).
    return pool[np.sort(np.random.default_rng(seed).choice(len(pool), n, replace=False))]


def _take(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return images if len(indices) == len(images) else images[indices]


def _load(path: Path, key: str, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, sigma, features) of the entry at `path`; DamagedEntry (or the reader's own error) unless
    its arrays hash to the sha256 stored with them and are the statistics of `key` for `dims`."""
    with np.load(path, allow_pickle=False) as entry:
        arrays = {name: entry[name] for name in entry.files}
    recorded = arrays.pop("sha256", None)
    check_digest(_arrays_sha256(arrays), None if recorded is None else str(recorded))
    mu, sigma, features, stored_key = arrays["mu"], arrays["sigma"], arrays["features"], str(arrays["key"])
    if stored_key != key:
        raise DamagedEntry(f"it holds the statistics of another key, {stored_key[:16]}...")
    if mu.shape != (dims,) or sigma.shape != (dims, dims) or features.shape[1:] != (dims,):
        raise DamagedEntry(f"its arrays are not shaped for {dims} features")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all() and np.isfinite(features).all()):
        raise DamagedEntry("it holds non-finite values")
    return mu, sigma, features


def _arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over each array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    # A concurrent driver sees either no file or the whole file, and two drivers racing both write
    # whole, self-checking entries of the same statistics, so either wins.
    with atomic_writer(path) as out:
        np.savez(out, **arrays, sha256=np.array(_arrays_sha256(arrays)))
