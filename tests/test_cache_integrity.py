"""Every kind of cache entry is checked when it is used: prepared data, its stat-index record,
reference statistics, converted FID weights and shipped files, each damaged on disk (cut short,
other bytes of the same size, a directory in the file's place), then used. Each time: one warning
line naming the entry, a result equal to an independent computation (or the fresh build), and a
healthy entry afterwards (the next use is a plain hit, with no warning)."""
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch
from PIL import Image

from sweeper.kinds.refstats import reference_stats
from sweeper.kinds.shipped import ship
from trainables.data import prepare
from trainables.data.stat_index import index_dir
from trainables.data.toy_faces import toy_faces
from trainables.metrics import RandomConvFeatures, extract
from trainables.metrics.fid_weights import cached_conversion

HOUR_NS = 3600 * 10**9


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _one_warning_naming(caplog, path: Path) -> None:
    (message,) = _warnings(caplog)
    assert "\n" not in message and "damaged" in message and str(path) in message, message
    caplog.clear()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _invert(path: Path, start: int, length: int) -> None:
    """Bytes [start, start+length) of the file inverted in place: the same size, other bytes."""
    data = bytearray(path.read_bytes())
    data[start:start + length] = bytes(b ^ 0xFF for b in data[start:start + length])
    path.write_bytes(bytes(data))


def _directory(path: Path) -> None:
    """A directory (not empty) where the file was: unreadable as a file even by root."""
    path.unlink()
    (path / "inside").mkdir(parents=True)


# --- prepared data -------------------------------------------------------------------------------

def _photos(root: Path) -> set[tuple[str, bytes]]:
    """16x16 PNGs, two classes, aged an hour (so the stat index records them); returns (class,
    CHW pixels) of each, read with PIL alone: a 16x16 image prepared at 16 is not resized."""
    expected = set()
    for cls, n in (("cat", 4), ("dog", 3)):
        for i in range(n):
            pixels = np.random.default_rng(100 * len(cls) + i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
            path = root / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            old = time.time_ns() - HOUR_NS
            os.utime(path, ns=(old, old))
            expected.add((cls, np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).tobytes()))
    return expected


def _content(data) -> set[tuple[str, bytes]]:
    return {(data.classes[label], image.tobytes()) for image, label in zip(data.images, data.labels)}


@pytest.mark.parametrize("damage", ["cut short", "pixels overwritten", "other bytes", "a directory"])
def test_damaged_prepared_data_is_prepared_again(tmp_path, caplog, damage):
    expected = _photos(tmp_path / "photos")
    first = prepare(str(tmp_path / "photos"), 16)
    assert _content(first.data) == expected and len(first.data) == 7
    path = first.path
    if damage == "cut short":
        _truncate(path)
    elif damage == "pixels overwritten":  # the Arrow file stays well-formed: only the hash can tell
        _invert(path, path.read_bytes().index(first.data.images[1].tobytes()), 16)
        with pa.memory_map(str(path)) as mapped:
            assert pa.ipc.open_file(mapped).read_all().num_rows == 7
    elif damage == "other bytes":
        path.write_bytes(os.urandom(path.stat().st_size))
    else:
        _directory(path)

    with caplog.at_level(logging.WARNING):
        again = prepare(str(tmp_path / "photos"), 16)
    _one_warning_naming(caplog, path)
    assert not again.from_cache and again.path == path and again.key == first.key
    assert _content(again.data) == expected and again.data.fingerprint == first.data.fingerprint
    with caplog.at_level(logging.WARNING):
        healthy = prepare(str(tmp_path / "photos"), 16)
    assert healthy.from_cache and _warnings(caplog) == []
    assert _content(healthy.data) == expected


@pytest.mark.parametrize("damage", ["other bytes", "a directory"])
def test_a_damaged_stat_index_record_is_replaced(tmp_path, caplog, damage):
    expected = _photos(tmp_path / "photos")
    first = prepare(str(tmp_path / "photos"), 16)
    (record,) = index_dir().glob("*.json")
    assert json.loads(record.read_text())["key"] == first.key
    if damage == "other bytes":
        record.write_bytes(os.urandom(record.stat().st_size))
    else:
        _directory(record)

    with caplog.at_level(logging.WARNING):
        again = prepare(str(tmp_path / "photos"), 16)
    _one_warning_naming(caplog, record)
    assert again.from_cache and again.key == first.key and _content(again.data) == expected
    assert json.loads(record.read_text())["key"] == first.key  # written whole again
    with caplog.at_level(logging.WARNING):
        assert prepare(str(tmp_path / "photos"), 16).from_cache
    assert _warnings(caplog) == []


# --- reference statistics ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def faces():
    return toy_faces(24, 16, seed=0)


@pytest.mark.parametrize("damage", ["cut short", "bytes inverted", "other statistics, same size", "a directory",
                                    "written without a sha256"])
def test_damaged_reference_statistics_are_computed_again(faces, caplog, damage):
    extractor = RandomConvFeatures(seed=0)
    first = reference_stats(faces.images, faces.fingerprint, extractor, n_samples=24)
    path = Path(os.environ["SWEEPER_CACHE"]) / "refstats" / f"{first.key}.npz"
    arrays = {"mu": first.mu, "sigma": first.sigma, "features": first.features, "key": np.array(first.key)}
    if damage == "cut short":
        _truncate(path)
    elif damage == "bytes inverted":
        _invert(path, path.read_bytes().index(first.sigma.tobytes()[:64]), 64)
    elif damage == "other statistics, same size":  # a well-formed entry, but not the one its sha256 was taken of
        size = path.stat().st_size
        with np.load(path) as entry:
            recorded = {name: entry[name] for name in entry.files if name not in arrays}  # the sha256
        np.savez(path, **{**arrays, "mu": first.mu + 1.0}, **recorded)
        assert path.stat().st_size == size
    elif damage == "a directory":
        _directory(path)
    else:  # as entries were before they carried a sha256: nothing to check them against
        np.savez(path, **arrays)

    with caplog.at_level(logging.WARNING):
        healed = reference_stats(faces.images, faces.fingerprint, extractor, n_samples=24)
    _one_warning_naming(caplog, path)
    assert not healed.cache_hit and healed.key == first.key
    # Against numpy alone, on features extracted here.
    features = extract(extractor, faces.images).astype(np.float64)
    np.testing.assert_allclose(healed.mu, features.mean(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(healed.sigma, np.cov(features, rowvar=False), rtol=1e-8, atol=1e-12)
    assert np.array_equal(healed.mu, first.mu) and np.array_equal(healed.sigma, first.sigma)
    with caplog.at_level(logging.WARNING):
        hit = reference_stats(faces.images, faces.fingerprint, extractor, n_samples=24)
    assert hit.cache_hit and _warnings(caplog) == [] and np.array_equal(hit.features, first.features)


# --- converted FID weights -----------------------------------------------------------------------

STATE = {"conv.weight": torch.arange(48.0).reshape(4, 3, 2, 2), "conv.bias": torch.linspace(-1, 1, 4)}


@pytest.mark.parametrize("damage", ["cut short", "tensor bytes inverted", "a directory", "sidecar a directory"])
def test_damaged_converted_weights_are_converted_again(tmp_path, caplog, damage):
    target = Path(os.environ["SWEEPER_CACHE"]) / "fid" / "converted.pth"
    builds = []

    def build():
        builds.append(1)
        return {name: tensor.clone() for name, tensor in STATE.items()}

    first = cached_conversion(target, build)
    good = target.read_bytes()
    sidecar = target.with_name(target.name + ".sha256")
    if damage == "cut short":
        _truncate(target)
    elif damage == "tensor bytes inverted":  # still a loadable torch file: only the hash can tell
        _invert(target, good.index(STATE["conv.weight"].numpy().tobytes()), 8)
        assert torch.load(target, weights_only=True).keys() == STATE.keys()
    elif damage == "a directory":
        _directory(target)
    else:
        _directory(sidecar)

    with caplog.at_level(logging.WARNING):
        weights = cached_conversion(target, build)
    _one_warning_naming(caplog, target)
    assert len(builds) == 2 and weights == first and target.read_bytes() == good
    assert weights.sha256 == hashlib.sha256(good).hexdigest() == sidecar.read_text()
    loaded = torch.load(target, weights_only=True)
    assert loaded.keys() == STATE.keys() and all(torch.equal(loaded[k], STATE[k]) for k in STATE)
    with caplog.at_level(logging.WARNING):
        assert cached_conversion(target, build) == first
    assert len(builds) == 2 and _warnings(caplog) == []


# --- shipped files -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=1, include_dashboard=False, address="local")
    yield
    ray.shutdown()


@pytest.mark.parametrize("damage", ["cut short", "other bytes", "a directory"])
def test_a_damaged_shipped_file_is_fetched_again_from_the_object_store(ray_local, tmp_path, caplog, damage):
    content = os.urandom(50_000)
    source = tmp_path / "driver-only.pth"
    source.write_bytes(content)
    shipped = ship(source)
    source.unlink()  # from here on only the object store has the bytes
    path = Path(shipped.local_path())
    assert path.read_bytes() == content
    if damage == "cut short":
        _truncate(path)
    elif damage == "other bytes":
        path.write_bytes(os.urandom(len(content)))
    else:
        _directory(path)

    with caplog.at_level(logging.WARNING):
        again = shipped.local_path()
    _one_warning_naming(caplog, path)
    assert again == str(path) and path.read_bytes() == content
    assert hashlib.sha256(path.read_bytes()).hexdigest() == shipped.sha256 == path.name.removesuffix(".pth")
    with caplog.at_level(logging.WARNING):
        assert shipped.local_path() == str(path)
    assert _warnings(caplog) == []
