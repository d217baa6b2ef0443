"""Kernel Inception Distance: unbiased MMD^2 with a cubic polynomial kernel (Binkowski et al. 2018)."""

from __future__ import annotations

import numpy as np


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m = len(x)
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    # Same estimator as torch-fidelity / the MMD-GAN code: within-set sums drop the diagonal
    # (self-similarity would bias it), the cross term keeps all m*m pairs.
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 10, subset_size: int = 1000, seed: int = 0
) -> float:
    """Mean unbiased MMD^2 over `subsets` random subsets; deterministic for a given seed.

    subset_size is capped at the smaller set, so small evals still give a number instead of failing
    (torch-fidelity refuses); with the cap, every subset of the smaller set is the whole set.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {a.shape} and {b.shape}")
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    # RandomState with the same draw order as torch-fidelity, so equal seeds give equal subsets.
    rng = np.random.RandomState(seed)
    mmds = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        mmds.append(_mmd2_unbiased(x, y))
    return float(np.mean(mmds))
