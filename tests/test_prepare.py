"""Ingest: folders and archives into the Arrow cache, skipped files by reason, the content
fingerprint, concurrent prepares, parallel decoding, the split and the `data prepare` command."""
import importlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.data import DatasetError, prepare, train_test_split
from trainables.data.prepare import prepared_dir
from trainables.data.remote import RemoteDataset, RemoteFile, register


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    # Each test sees only its own prepared files.
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))


def _png(path: Path, size=(20, 20), seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _pets(root: Path) -> Path:
    for i in range(3):
        _png(root / "cat" / f"c{i}.png", seed=i)
    for i in range(2):
        _png(root / "dog" / f"d{i}.png", seed=10 + i)
    return root


def _bomb_png(path: Path):
    """A valid 1x1 PNG whose header claims 30000x30000: Pillow refuses it at open."""
    _png(path, size=(1, 1))
    data = bytearray(path.read_bytes())
    ihdr = data.find(b"IHDR")
    data[ihdr + 4:ihdr + 12] = (30000).to_bytes(4, "big") * 2
    data[ihdr + 17:ihdr + 21] = zlib.crc32(bytes(data[ihdr:ihdr + 17])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def _zip(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(folder.rglob("*")):
            zf.write(f, Path(folder.name) / f.relative_to(folder))
    return out


def _tar(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return out


def test_folder_zip_and_tar_give_the_same_prepared_set(tmp_path):
    pets = _pets(tmp_path / "pets")
    folder = prepare(str(pets), 16)
    assert folder.data.classes == ("cat", "dog") and folder.data.labels.tolist() == [0, 0, 0, 1, 1]
    assert not folder.from_cache and folder.path.parent == prepared_dir()
    # The archives wrap the same files in a top folder "pets/": the same content, the same cache entry.
    for archive in (_zip(pets, tmp_path / "pets.zip"), _tar(pets, tmp_path / "pets.tar.gz")):
        again = prepare(str(archive), 16)
        assert again.from_cache and again.key == folder.key and again.data.fingerprint == folder.data.fingerprint
        np.testing.assert_array_equal(again.data.images, folder.data.images)
    dogs = prepare(f"{tmp_path / 'pets.tar.gz'}:dog", 16)
    assert dogs.data.labels.tolist() == [1, 1] and not dogs.from_cache


def test_archive_decoding_matches_the_folder_bit_for_bit(tmp_path):
    pets = _pets(tmp_path / "pets")
    archive = _tar(pets, tmp_path / "pets.tar.gz")
    from_archive = prepare(str(archive), 16)  # decoded from the archive first this time
    shutil.rmtree(prepared_dir())
    np.testing.assert_array_equal(prepare(str(pets), 16).data.images, from_archive.data.images)


def test_bad_files_are_skipped_and_counted_by_reason(tmp_path):
    root = _pets(tmp_path / "pets")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "text.png").write_text("not an image\n" * 10)
    whole = (root / "dog" / "d0.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    broken = bytearray(whole)
    broken[broken.find(b"IDAT") + 100] ^= 0xFF
    (root / "dog" / "corrupt.png").write_bytes(bytes(broken))
    (root / "dog" / "gone.jpg").symlink_to(root / "nowhere.jpg")  # dangling: unreadable
    _bomb_png(root / "dog" / "bomb.png")
    (root / "dog" / "notes.txt").write_text("not an image extension: ignored, not counted")

    prepared = prepare(str(root), 16)
    assert len(prepared.data) == 5
    assert prepared.data.skipped == {"empty": 1, "not-an-image": 1, "truncated": 1, "corrupt": 1,
                                     "unreadable": 1, "too-large": 1}
    assert prepared.skipped_examples["unreadable"] == ["dog/gone.jpg"]
    summary = prepared.summary()
    assert "skipped 1 truncated: dog/truncated.png" in summary and "skipped 1 empty: cat/empty.jpg" in summary
    # A cache hit reports the same.
    assert prepare(str(root), 16).data.skipped == prepared.data.skipped


def test_zero_usable_images_is_a_one_line_error_exit_2(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="no usable images in .*broken"):
        prepare(str(folder), 16)
    assert not list(prepared_dir().glob("*.arrow"))
    result = _cli("data", "prepare", str(folder), "--resolution", "16")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no usable images" in result.stderr


def test_fingerprint_and_key_follow_content_not_path(tmp_path):
    first = _pets(tmp_path / "a" / "pets")
    second = tmp_path / "b" / "elsewhere"
    shutil.copytree(first, second)
    a, b = prepare(str(first), 20), prepare(str(second), 20)
    assert a.key == b.key and b.from_cache and a.data.fingerprint == b.data.fingerprint

    pixels = np.asarray(Image.open(second / "cat" / "c0.png")).copy()
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(second / "cat" / "c0.png")
    c = prepare(str(second), 20)  # 20 px: no resampling, so the one-unit change survives decoding
    assert c.key != a.key and not c.from_cache and c.data.fingerprint != a.data.fingerprint


def test_loading_is_a_read_only_memory_map(tmp_path):
    pets = _pets(tmp_path / "pets")
    first = prepare(str(pets), 16)
    loaded = prepare(str(pets), 16)
    assert loaded.from_cache and not loaded.data.images.flags.writeable
    np.testing.assert_array_equal(loaded.data.images, first.data.images)
    assert loaded.data.images.shape == (5, 3, 16, 16) and loaded.data.images.flags.c_contiguous


_PARALLEL_IN_A_FRESH_PROCESS = """
import sys, threading
from trainables.data import prepare
from trainables.data.prepare import _pool_context
stop = threading.Event()
if sys.argv[2] == "spawn":  # a running thread makes the pool spawn its workers instead of forking
    threading.Thread(target=stop.wait).start()
try:
    assert _pool_context().get_start_method() == sys.argv[2], _pool_context().get_start_method()
    prepare(sys.argv[1], 8, workers=2)
finally:
    stop.set()
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_parallel_decoding_equals_serial(tmp_path, start_method):
    root = tmp_path / "many"
    for i in range(300):  # above PARALLEL_FROM, so two worker processes decode
        _png(root / ("cat" if i % 2 else "dog") / f"{i:03d}.png", size=(12, 10), seed=i)
    # In a fresh process: the test process may run threads of its own (earlier tests' libraries).
    child = subprocess.run([sys.executable, "-c", _PARALLEL_IN_A_FRESH_PROCESS, str(root), start_method],
                           capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    parallel = prepare(str(root), 8)
    assert parallel.from_cache
    shutil.rmtree(prepared_dir())
    serial = prepare(str(root), 8, workers=1)
    assert parallel.key == serial.key
    np.testing.assert_array_equal(parallel.data.images, serial.data.images)


def _prepare_in_child(args):
    source, cache = args
    os.environ["SWEEPER_CACHE"] = cache
    from trainables.data import prepare as child_prepare

    p = child_prepare(source, 16, workers=1)
    return str(p.path), p.data.fingerprint


def test_two_processes_preparing_at_once_share_one_valid_file(tmp_path):
    root = tmp_path / "many"
    for i in range(200):
        _png(root / "cat" / f"{i:03d}.png", seed=i)
    cache = os.environ["SWEEPER_CACHE"]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_prepare_in_child, [(str(root), cache)] * 2)
    assert results[0] == results[1]
    files = list(prepared_dir().iterdir())
    assert [f.name for f in files if f.suffix == ".arrow"] == [Path(results[0][0]).name]
    assert not [f for f in files if ".tmp" in f.name]
    loaded = prepare(str(root), 16)
    assert loaded.from_cache and loaded.data.fingerprint == results[0][1] and len(loaded.data) == 200


def test_split_is_deterministic_stratified_and_disjoint(tmp_path):
    root = tmp_path / "many"
    for i in range(40):
        _png(root / ("cat" if i < 30 else "dog") / f"{i:02d}.png", seed=i)
    data = prepare(str(root), 8).data
    train, test = train_test_split(data, 0.2)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 40
    assert np.bincount(data.labels[test]).tolist() == [6, 2]  # 20% of each class
    again_train, again_test = train_test_split(prepare(str(root), 8).data, 0.2)
    np.testing.assert_array_equal(test, again_test)
    other = prepare(str(root), 12).data  # other content (resolution): another split
    assert not np.array_equal(train_test_split(other, 0.2)[1], test)


def test_named_dataset_is_fetched_then_prepared(tmp_path, monkeypatch):
    pets = _pets(tmp_path / "pets")
    archive = _tar(pets, tmp_path / "pets.tar.gz")
    import hashlib

    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    register(RemoteDataset("test-pets", (RemoteFile(archive.as_uri(), digest),), root="pets"))
    monkeypatch.setenv("SWEEPER_OFFLINE", "0")
    monkeypatch.setenv("SWEEPER_DATASETS", "")  # downloaded, not taken from the mirror conftest sets
    cats = prepare("test-pets:cat", 16)
    assert cats.data.classes == ("cat", "dog") and cats.data.labels.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(cats.data.images, prepare(f"{pets}:cat", 16).data.images)


def test_unknown_source_and_class_are_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match="dataset not found: .*nowhere"):
        prepare(str(tmp_path / "nowhere"), 16)
    pets = _pets(tmp_path / "pets")
    with pytest.raises(DatasetError, match=r"no class 'horse' .*classes: cat, dog"):
        prepare(f"{pets}:horse", 16)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sweeper", *args], capture_output=True, text=True,
                          env={**os.environ}, timeout=120)


def test_data_prepare_command_prints_a_summary(tmp_path):
    pets = _pets(tmp_path / "pets")
    (pets / "dog" / "empty.png").write_bytes(b"")
    result = _cli("data", "prepare", f"{pets}", "--resolution", "16")
    assert result.returncode == 0, result.stderr
    assert "5 images at 16x16 (cat 3, dog 2)" in result.stdout and "skipped 1 empty: dog/empty.png" in result.stdout
    assert len(list(prepared_dir().glob("*.arrow"))) == 1


def test_sources_too_large_to_keep_in_memory_are_read_again(tmp_path, monkeypatch):
    # import_module: the package's `prepare` attribute is the function, not this module.
    prepare_module = importlib.import_module("trainables.data.prepare")
    pets = _pets(tmp_path / "pets")
    kept = prepare(str(pets), 16)
    shutil.rmtree(prepared_dir())
    monkeypatch.setattr(prepare_module, "KEEP_BYTES", 100)  # every file is larger than this
    reread = prepare(str(pets), 16)
    assert reread.key == kept.key
    np.testing.assert_array_equal(reread.data.images, kept.data.images)
