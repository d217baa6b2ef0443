"""FID (and KID) reference statistics of the real data: computed once by the driver, cached by content."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def refstats_key(fingerprint: str, resolution: tuple[int, int], extractor_name: str, n_samples: int, seed: int) -> str:
    """sha256 over the content that determines the statistics, never over a path."""
    fields = {"format": _FORMAT, "fingerprint": fingerprint, "resolution": list(resolution),
              "extractor": extractor_name, "n_samples": n_samples, "seed": seed}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def reference_stats(images: np.ndarray, fingerprint: str, extractor, n_samples: int, seed: int = 0) -> RefStats:
    """Mean and covariance of `extractor` features of up to `n_samples` real images (uint8 NCHW).

    Uses every image when n_samples >= len(images), else a subset drawn with `seed`. Cached at
    <cache>/refstats/<key>.npz; an unreadable or mismatched entry is recomputed and replaced.
    """
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"reference images must be uint8 [N>=2, 3, H, W], got shape {images.shape}")
    n = min(int(n_samples), len(images))
    key = refstats_key(fingerprint, tuple(images.shape[2:]), extractor.name, n, seed)
    path = cache_dir() / "refstats" / f"{key}.npz"
    cached = _load(path, key, extractor.dims)
    if cached is not None:
        return RefStats(*cached, extractor.name, n, key, cache_hit=True)
    feats = extract(extractor, _subset(images, n, seed), progress=f"reference statistics ({extractor.name}, {n} images)")
    mu, sigma = feature_stats(feats)
    keep = np.sort(np.random.default_rng(seed).permutation(len(feats))[:KID_FEATURES])
    features = feats[keep].astype(np.float32)
    _save_atomic(path, mu=mu, sigma=sigma, features=features, key=np.array(key))
    return RefStats(mu, sigma, features, extractor.name, n, key, cache_hit=False)


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
    # A temp file in the same directory, then os.replace: a concurrent driver sees either no file
    # or the whole file, and two drivers racing both write identical content, so either wins.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
