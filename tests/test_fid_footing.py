"""The FID reference statistics' cache key names the features exactly: the extractor's name, its
precision and the full sha256 of its weights file (two same-shaped files under one name are other
features). Real Inception networks built from two weights files, real extraction, real cache."""
import hashlib

import numpy as np
import torch

from sweeper.kinds.refstats import reference_stats, refstats_key
from trainables.metrics import InceptionFeatures, fid_weights


def _weights_file(path, seed: int) -> str:
    torch.manual_seed(seed)  # the skeleton's random init: same shapes, other values
    torch.save(fid_weights.inception_skeleton().state_dict(), path)
    return str(path)


def test_the_key_carries_weights_and_precision_and_keeps_old_keys():
    base = refstats_key("f" * 64, (32, 32), "inception-v3-compat", 512, 0)
    keys = {base, refstats_key("f" * 64, (32, 32), "inception-v3-compat", 512, 0, "bf16"),
            refstats_key("f" * 64, (32, 32), "inception-v3-compat", 512, 0, weights_sha256="a" * 64),
            refstats_key("f" * 64, (32, 32), "inception-v3-compat", 512, 0, weights_sha256="b" * 64),
            refstats_key("f" * 64, (32, 32), "inception-v3-compat", 512, 0, "bf16", weights_sha256="a" * 64)}
    assert len(keys) == 5
    # No weights file (random conv): the key stays what it was before weights were in it.
    assert refstats_key("f" * 64, (32, 32), "inception-v3-compat", 512, 0, weights_sha256=None) == base


def test_two_weights_files_under_one_name_never_share_statistics(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    first = InceptionFeatures(_weights_file(tmp_path / "a.pth", 0))
    second = InceptionFeatures(_weights_file(tmp_path / "b.pth", 1))
    assert first.name == second.name and first.weights_sha256 != second.weights_sha256
    assert first.weights_sha256 == hashlib.sha256((tmp_path / "a.pth").read_bytes()).hexdigest()
    a = reference_stats(images, "fingerprint", first, n_samples=4)
    b = reference_stats(images, "fingerprint", second, n_samples=4)
    assert not b.cache_hit and a.key != b.key and not np.allclose(a.mu, b.mu)
    again = reference_stats(images, "fingerprint", InceptionFeatures(tmp_path / "a.pth"), n_samples=4)
    assert again.cache_hit and again.key == a.key and np.array_equal(again.mu, a.mu)
