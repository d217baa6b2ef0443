"""How sure a number sweeper shows a user is: 95% intervals of test accuracies, the Classification
Accuracy Score measured above chance, and whether a difference is more than its noise.

- An accuracy of k right out of n test images gets Wilson's score interval (scipy's
  `binomtest(...).proportion_ci(method="wilson")`), which stays inside [0, 1] and keeps its coverage
  near 0 and 1 and at a few hundred images, where the normal approximation does not.
- The CAS above chance, (acc_synthetic - chance) / (acc_real - chance), gets a parametric bootstrap
  interval: each accuracy redrawn as Binomial(n, acc) / n, independently (written by hand: scipy's
  `bootstrap` resamples data, and the summary has the two accuracies and their test counts, not the
  per-image outcomes). The two classifiers are tested on the same images, so their errors are
  positively correlated and a paired bootstrap would be narrower: this interval is the conservative
  one. Where either accuracy's interval includes chance, there is no score at all: a plain ratio of
  accuracies is bounded below by chance / real, so it flatters weak generators and weak references
  alike, and a ratio whose denominator has not learned says nothing.
- A difference between two numbers is "inside the noise" where their intervals overlap (accuracies),
  or where two independent draws disagree on its sign (FIDs: sweeper.kinds.gan).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest

CONFIDENCE = 0.95
RESAMPLES = 10_000


def wilson(accuracy: float, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of an accuracy measured on `n` images."""
    if n <= 0 or not math.isfinite(accuracy):
        return math.nan, math.nan
    k = int(round(accuracy * n))
    interval = binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(interval.low), float(interval.high)


def includes(interval: tuple[float, float], value: float) -> bool:
    return interval[0] <= value <= interval[1]


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def above_chance(synthetic: float, real: float, chance: float, n_synthetic: int, n_real: int,
                 seed: int = 0) -> tuple[float, float, float]:
    """(score, low, high): the CAS above chance and its 95% parametric bootstrap interval. Only
    meaningful where the real-only accuracy is above chance (`cas_verdict` checks that first)."""
    score = (synthetic - chance) / (real - chance)
    rng = np.random.default_rng(seed)
    draws_synthetic = rng.binomial(n_synthetic, synthetic, RESAMPLES) / n_synthetic
    draws_real = rng.binomial(n_real, real, RESAMPLES) / n_real
    above = draws_real > chance  # a resample whose reference fell to chance has no score
    scores = (draws_synthetic[above] - chance) / (draws_real[above] - chance)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(score), float(low), float(high)


def cas_verdict(synthetic: float, real: float, chance: float, n_synthetic: int, n_real: int,
                capped: bool = False) -> tuple[dict, list[str]]:
    """The parent run's CAS numbers and the console's lines: each accuracy with its interval, then the
    score above chance with its interval, or, where an interval includes chance, no score and why.
    `capped`: the real-only reference was still improving when its cap of eval periods ended it."""
    real_ci, synthetic_ci = wilson(real, n_real), wilson(synthetic, n_synthetic)
    metrics = {"test_acc_real_only": real, "test_acc_real_only_low": real_ci[0], "test_acc_real_only_high": real_ci[1],
               "test_acc_synthetic_only": synthetic, "test_acc_synthetic_only_low": synthetic_ci[0],
               "test_acc_synthetic_only_high": synthetic_ci[1], "cas_ratio": synthetic / real if real else math.nan}
    lines = [f"test accuracy, 95% interval (Wilson): real-only {_acc(real, real_ci, n_real)}; synthetic-only "
             f"{_acc(synthetic, synthetic_ci, n_synthetic)}; chance {chance:.3f}"]
    cap = (" It was still improving when its cap of eval periods ended it: raise reference_max_evals."
           if capped else "")
    if includes(real_ci, chance):
        lines.append(f"Classification Accuracy Score: none. The real-only reference has not learned (its interval "
                     f"includes chance {chance:.3f}), so no score can be measured against it: give it more budget "
                     f"(reference_max_evals, steps_per_eval) or more training images.{cap}")
        return metrics, lines
    if includes(synthetic_ci, chance):
        lines.append(f"Classification Accuracy Score: none. The synthetic-only classifier is at chance (its interval "
                     f"includes {chance:.3f}): the generators carry no class signal a real photo shares.{cap}")
        return metrics, lines
    score, low, high = above_chance(synthetic, real, chance, n_synthetic, n_real)
    metrics.update(cas_above_chance=score, cas_above_chance_low=low, cas_above_chance_high=high)
    lines.append(f"Classification Accuracy Score above chance: {score:.3f} [95% {low:.3f}, {high:.3f}] = "
                 f"(synthetic {synthetic:.3f} - chance) / (real {real:.3f} - chance); plain ratio "
                 f"{synthetic / real:.3f}.{cap}")
    return metrics, lines


def _acc(value: float, interval: tuple[float, float], n: int) -> str:
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}] on {n} images"
