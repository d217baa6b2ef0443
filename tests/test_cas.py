"""The Classification Accuracy Score and its intervals (sweeper.tracking.intervals), against
independent references: Wilson's interval from its closed form, the bootstrap interval of the score
above chance against the delta method, and the verdicts that print no score at all."""
import math

import pytest

from sweeper.tracking.intervals import above_chance, cas_verdict, wilson


def _wilson_by_hand(accuracy: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("accuracy, n", [(0.55, 2000), (0.5, 200), (0.98, 500), (0.0, 50)])
def test_wilson_interval_is_the_closed_form(accuracy, n):
    assert wilson(accuracy, n) == pytest.approx(_wilson_by_hand(accuracy, n), abs=1e-6)


def test_the_interval_shrinks_as_test_images_grow():
    widths = [wilson(0.7, n)[1] - wilson(0.7, n)[0] for n in (100, 1000, 10_000)]
    assert widths[0] > widths[1] > widths[2]
    # ~1/sqrt(n): ten times the images, about a third of the width
    assert widths[1] / widths[0] == pytest.approx(1 / math.sqrt(10), rel=0.1)


def test_the_score_above_chance_and_its_interval_match_the_delta_method():
    synthetic, real, chance, n = 0.70, 0.90, 0.5, 2000
    score, low, high = above_chance(synthetic, real, chance, n, n)
    assert score == pytest.approx((0.70 - 0.5) / (0.90 - 0.5)) == pytest.approx(0.5)
    # Delta method for (s - c) / (r - c), s and r independent binomial proportions.
    var_s, var_r = synthetic * (1 - synthetic) / n, real * (1 - real) / n
    se = math.sqrt(var_s / (real - chance) ** 2 + (synthetic - chance) ** 2 * var_r / (real - chance) ** 4)
    assert low == pytest.approx(score - 1.96 * se, abs=0.01) and high == pytest.approx(score + 1.96 * se, abs=0.01)
    _, low_small, high_small = above_chance(synthetic, real, chance, 200, 200)
    assert high_small - low_small > 2.5 * (high - low)  # fewer test images, a wider interval


def test_a_synthetic_only_classifier_at_chance_gets_no_score_and_says_why():
    metrics, lines = cas_verdict(synthetic=0.50, real=0.551, chance=0.5, n_synthetic=2000, n_real=2000)
    assert "cas_above_chance" not in metrics
    assert metrics["cas_ratio"] == pytest.approx(0.50 / 0.551)  # the plain ratio, under its own name
    assert metrics["test_acc_real_only_low"] > 0.5  # the reference did learn, a little
    assert "no class signal" in lines[-1] and "Classification Accuracy Score: none" in lines[-1]


def test_a_reference_at_chance_gets_no_score_and_asks_for_its_budget():
    metrics, lines = cas_verdict(synthetic=0.80, real=0.52, chance=0.5, n_synthetic=300, n_real=300, capped=True)
    assert "cas_above_chance" not in metrics
    assert "has not learned" in lines[-1] and "reference_max_evals" in lines[-1]


def test_a_pair_above_chance_gets_the_score_with_its_interval():
    metrics, lines = cas_verdict(synthetic=0.70, real=0.90, chance=0.5, n_synthetic=2000, n_real=2000)
    assert metrics["cas_above_chance"] == pytest.approx(0.5)
    assert metrics["cas_above_chance_low"] < 0.5 < metrics["cas_above_chance_high"]
    low, high = wilson(0.9, 2000)
    assert (metrics["test_acc_real_only_low"], metrics["test_acc_real_only_high"]) == (low, high)
    assert "above chance: 0.500 [95%" in lines[-1] and "plain ratio 0.778" in lines[-1]
