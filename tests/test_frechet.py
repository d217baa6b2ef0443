"""FID and KID math against independent references (scipy's sqrtm, a double-loop MMD)."""
import re

import numpy as np
import pytest
import scipy.linalg

from trainables.metrics import feature_stats, frechet_distance, kernel_inception_distance


def scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean.real))


def random_stats(rng, dims, n=None):
    """Mean and covariance of n samples of a correlated Gaussian (well-conditioned when n >> dims)."""
    n = n or 10 * dims
    mix = rng.normal(size=(dims, dims)) / np.sqrt(dims) + np.eye(dims)
    return feature_stats(rng.normal(size=(n, dims)) @ mix + rng.normal(size=dims))


@pytest.mark.parametrize("dims", [2, 8, 64, 200])
def test_frechet_matches_scipy_sqrtm(dims):
    rng = np.random.default_rng(dims)
    (mu1, s1), (mu2, s2) = random_stats(rng, dims), random_stats(rng, dims)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)


def test_frechet_of_identical_stats_is_zero_and_symmetric():
    rng = np.random.default_rng(0)
    (mu1, s1), (mu2, s2) = random_stats(rng, 64), random_stats(rng, 64)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_of_known_gaussians():
    # N(0, a I) vs N(m, b I) in d dims: |m|^2 + d (sqrt(a) - sqrt(b))^2.
    d, a, b = 5, 4.0, 1.0
    m = np.full(d, 0.5)
    expected = m @ m + d * (np.sqrt(a) - np.sqrt(b)) ** 2
    assert frechet_distance(np.zeros(d), a * np.eye(d), m, b * np.eye(d)) == pytest.approx(expected, rel=1e-12)


def test_frechet_with_rank_deficient_covariances_is_finite():
    rng = np.random.default_rng(1)
    (mu1, s1), (mu2, s2) = random_stats(rng, 64, n=20), random_stats(rng, 64, n=30)
    assert np.linalg.matrix_rank(s1) < 64
    fid = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(fid) and fid > 0
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def reference_kid(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written as plain loops over pairs."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (sum(ai * bi for ai, bi in zip(a, b)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_double_loop_reference():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1.2, size=(7, 3))
    # One subset as large as both sets is the whole sets, whatever the draw.
    assert kernel_inception_distance(x, y, subsets=1, subset_size=7) == pytest.approx(reference_kid(x, y), rel=1e-10)
    assert kernel_inception_distance(x, y, subsets=3, subset_size=100) == pytest.approx(reference_kid(x, y), rel=1e-10)


def test_kid_small_for_same_distribution_large_for_shifted():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(600, 32)), rng.normal(size=(600, 32))
    shifted = rng.normal(0.5, 1.0, size=(600, 32))
    same = kernel_inception_distance(a, b, subsets=5, subset_size=300)
    different = kernel_inception_distance(a, shifted, subsets=5, subset_size=300)
    assert abs(same) < 0.02
    assert different > 0.1 and different > 20 * abs(same)


def test_kid_is_deterministic_for_a_seed():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(200, 16)), rng.normal(0.2, 1.0, size=(200, 16))
    first = kernel_inception_distance(a, b, subsets=4, subset_size=50, seed=7)
    assert kernel_inception_distance(a, b, subsets=4, subset_size=50, seed=7) == first
    assert kernel_inception_distance(a, b, subsets=4, subset_size=50, seed=8) != first


def test_kid_equals_torch_fidelity_for_the_same_seed():
    torch = pytest.importorskip("torch")
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(300, 16)), rng.normal(0.3, 1.0, size=(250, 16))
    theirs = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=4, kid_subset_size=100,
                                    rng_seed=11, verbose=False)["kernel_inception_distance_mean"]
    assert kernel_inception_distance(a, b, subsets=4, subset_size=100, seed=11) == pytest.approx(theirs, rel=1e-9)


def test_feature_stats_are_float64_and_need_a_matrix_of_at_least_two_rows():
    features = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    mu, sigma = feature_stats(features)
    assert mu.dtype == sigma.dtype == np.float64
    assert np.array_equal(sigma, np.cov(features.astype(np.float64).T))  # float64 before the products
    assert feature_stats(features[:2])[1].shape == (3, 3)  # two rows are enough for a covariance
    for bad in (features[:1], features[0], features[None]):
        with pytest.raises(ValueError, match=re.escape(str(bad.shape))):
            feature_stats(bad)


def test_frechet_distance_works_in_float64_and_rejects_mismatched_statistics():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((50, 8)), rng.standard_normal((50, 8)) + 0.3
    (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
    in64 = frechet_distance(mu1, s1, mu2, s2)
    # float32 covariances go through the same float64 algebra, so the result is the float64 one exactly.
    assert frechet_distance(mu1, s1.astype(np.float32), mu2, s2) == \
        frechet_distance(mu1, s1.astype(np.float32).astype(np.float64), mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2.astype(np.float32)) == \
        frechet_distance(mu1, s1, mu2, s2.astype(np.float32).astype(np.float64))
    assert in64 > 0
    for args in ((mu1, s1, mu2[:4], s2), (mu1, s1, mu2, s2[:4, :4]), (mu1[:4], s1, mu2[:4], s2)):
        with pytest.raises(ValueError, match="mismatched statistics"):
            frechet_distance(*args)
