"""Reference statistics: cached by content, computed once, written atomically, self-healing."""
import numpy as np
import pytest

from sweeper.kinds.refstats import RefStats, reference_stats
from trainables.data.toy_faces import toy_faces
from trainables.metrics import RandomConvFeatures, cache_dir, extract, feature_stats


class Counting:
    """A real extractor that counts the images it is asked to featurize."""

    def __init__(self, inner):
        self.inner, self.images_seen = inner, 0
        self.name, self.dims, self.device, self.weights_path = inner.name, inner.dims, inner.device, None

    def features(self, images):
        self.images_seen += len(images)
        return self.inner.features(images)


@pytest.fixture(scope="module")
def faces():
    return toy_faces(120, 32, seed=0)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path))
    return tmp_path / "refstats"


def test_miss_then_hit(faces, cache):
    extractor = Counting(RandomConvFeatures(seed=0))
    first = reference_stats(faces.images, faces.fingerprint, extractor, n_samples=100)
    assert isinstance(first, RefStats) and not first.cache_hit
    assert extractor.images_seen == 100 and first.n_samples == 100
    assert first.mu.shape == (512,) and first.sigma.shape == (512, 512)
    assert [p.name for p in cache.iterdir()] == [f"{first.key}.npz"]  # and no temp file left

    second = reference_stats(faces.images, faces.fingerprint, extractor, n_samples=100)
    assert second.cache_hit and extractor.images_seen == 100
    assert np.array_equal(second.mu, first.mu) and np.array_equal(second.sigma, first.sigma)
    assert first.features.shape == (100, 512) and np.array_equal(second.features, first.features)
    assert second.key == first.key and second.extractor_name == "random-conv-v1-seed0"


def test_stats_are_those_of_a_seeded_subset(faces, cache):
    extractor = RandomConvFeatures(seed=0)
    stats = reference_stats(faces.images, faces.fingerprint, extractor, n_samples=50, seed=3)
    again = reference_stats(faces.images, faces.fingerprint, extractor, n_samples=50, seed=3)
    assert np.array_equal(stats.mu, again.mu)
    mu_all, _ = feature_stats(extract(extractor, faces.images))
    assert not np.allclose(stats.mu, mu_all)  # a subset, not all 120
    everything = reference_stats(faces.images, faces.fingerprint, extractor, n_samples=10_000)
    assert everything.n_samples == 120
    np.testing.assert_allclose(everything.mu, mu_all, rtol=1e-12)
    # KID's real features are rows of the same extraction (float32), each image once.
    all_feats = extract(extractor, faces.images).astype(np.float32)
    assert everything.features.shape == all_feats.shape
    assert sorted(map(bytes, everything.features)) == sorted(map(bytes, all_feats))


def test_key_depends_on_content_not_path(faces, cache):
    extractor = RandomConvFeatures(seed=0)
    base = reference_stats(faces.images, faces.fingerprint, extractor, 64).key
    keys = {
        base,
        reference_stats(faces.images, "another-dataset", extractor, 64).key,
        reference_stats(faces.images, faces.fingerprint, RandomConvFeatures(seed=1), 64).key,
        reference_stats(faces.images, faces.fingerprint, extractor, 65).key,
        reference_stats(faces.images, faces.fingerprint, extractor, 64, seed=1).key,
    }
    assert len(keys) == 5
    # Requests above the dataset size all mean "every image": one entry.
    assert reference_stats(faces.images, faces.fingerprint, extractor, 500).key == \
        reference_stats(faces.images, faces.fingerprint, extractor, 120).key


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_cache_file_is_recomputed(faces, cache, damage):
    extractor = Counting(RandomConvFeatures(seed=0))
    first = reference_stats(faces.images, faces.fingerprint, extractor, 64)
    path = cache / f"{first.key}.npz"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 999, "empty": b""}[damage])

    healed = reference_stats(faces.images, faces.fingerprint, extractor, 64)
    assert not healed.cache_hit and extractor.images_seen == 128
    assert np.array_equal(healed.mu, first.mu)
    assert reference_stats(faces.images, faces.fingerprint, extractor, 64).cache_hit
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


def test_cache_lives_under_sweeper_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("SWEEPER_CACHE")
    assert str(cache_dir()).endswith(".cache/sweeper")
