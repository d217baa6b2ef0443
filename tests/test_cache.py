"""trainables.cache's shared mechanics on real files: whole-or-nothing writes, readable by other users,
safe with concurrent writers; content keys and file hashes, and every cache key built on them
unchanged from the formulas they replaced (users' existing caches must still hit)."""
import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from trainables.cache import atomic_writer, content_key, file_sha256, write_atomic


def test_writer_puts_the_content_at_the_path_creating_folders(tmp_path):
    path = tmp_path / "a" / "b" / "entry.bin"
    with atomic_writer(path) as out:
        out.write(b"first ")
        out.write(b"second")
    assert path.read_bytes() == b"first second"
    assert os.listdir(path.parent) == ["entry.bin"]  # no temp file left
    write_atomic(path, b"replaced")
    assert path.read_bytes() == b"replaced"


def test_written_file_is_readable_by_others_whatever_the_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        write_atomic(tmp_path / "shared.bin", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "shared.bin").stat().st_mode) == 0o644


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_failed_write_leaves_no_temp_file_and_no_target(tmp_path, error):
    path = tmp_path / "entry.bin"
    with pytest.raises(error), atomic_writer(path) as out:
        out.write(b"half")
        raise error()
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_an_existing_target_unchanged(tmp_path):
    path = tmp_path / "entry.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(path) as out:
        out.write(b"new, but only half")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["entry.bin"]


def test_two_writers_at_once_both_finish_and_one_whole_content_wins(tmp_path):
    path = tmp_path / "entry.bin"
    contents = [bytes([i]) * (4 << 20) for i in (1, 2)]
    both_writing = threading.Barrier(2, timeout=30)
    errors = []

    def write(content: bytes) -> None:
        try:
            with atomic_writer(path) as out:
                out.write(content[: len(content) // 2])
                both_writing.wait()  # each holds its own temp file while the other writes
                out.write(content[len(content) // 2:])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(c,)) for c in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_bytes() in contents
    assert os.listdir(tmp_path) == ["entry.bin"]


def test_content_key_is_of_the_content_not_the_key_order():
    a = {"format": 2, "seed": 0, "resolution": [32, 32], "nested": {"x": 1, "y": 2}}
    b = {"nested": {"y": 2, "x": 1}, "resolution": [32, 32], "seed": 0, "format": 2}
    assert content_key(a) == content_key(b)
    assert content_key(a) != content_key({**a, "seed": 1})
    assert content_key(a) == hashlib.sha256(json.dumps(a, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("size", [0, 10, (1 << 20) * 2 + 7])  # empty, one chunk, across chunk boundaries
def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


# Key stability: each converted site against the formula it had before, written out inline.

def test_refstats_key_is_unchanged():
    from sweeper.kinds.refstats import _FORMAT, refstats_key

    for precision in ("fp32", "bf16"):
        fields = {"format": _FORMAT, "fingerprint": "f" * 64, "resolution": [32, 32],
                  "extractor": "inception-v3-compat", "n_samples": 512, "seed": 0}
        if precision != "fp32":
            fields["precision"] = precision
        old = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
        assert refstats_key("f" * 64, (32, 32), "inception-v3-compat", 512, 0, precision) == old
    # Pinned as computed by the code before content_key existed.
    assert refstats_key("f" * 64, (32, 32), "inception-v3-compat", 512, 0) == \
        "a90b5c3737acd2d0f0df1c8b13097377f49030993f07b93798bbaaf230cfd983"
    assert refstats_key("f" * 64, (32, 32), "inception-v3-compat", 512, 0, "bf16") == \
        "3ce5c6d989ceb2d90be0d653441bb1f245276e60ea96012cda5911fc26124982"


def test_stat_index_record_name_is_unchanged(tmp_path):
    from trainables.data.prepare import FORMAT
    from trainables.data.stat_index import _record_path

    source = tmp_path / "photos"
    options = {"format": FORMAT, "resolution": 64, "class_name": None}
    old = hashlib.sha256(json.dumps([str(source.resolve()), options], sort_keys=True).encode()).hexdigest()
    assert _record_path(source, options).name == f"{old}.json"


def test_converted_fid_weights_name_is_unchanged(tmp_path):
    from trainables.metrics.fid_weights import CONVERTER_VERSION, converted_path

    source = tmp_path / "default_1.pt"
    source.write_bytes(os.urandom(3 << 20))
    old = hashlib.sha256()
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            old.update(chunk)
    expected = f"inception-v3-compat-pool2048-only-fidhelper-{old.hexdigest()[:16]}-{CONVERTER_VERSION}.pth"
    assert converted_path(source).name == expected


def test_prepared_dataset_keys_are_not_content_keys():
    # Why prepare.py keeps its own json.dumps (no sort_keys): its headers are not in sorted key
    # order, so content_key would name every prepared dataset anew.
    header = {"format": 1, "toy-faces": 1, "n": 64, "resolution": 32, "seed": 0, "class": None}
    assert list(header) != sorted(header)
    assert content_key(header) != hashlib.sha256(json.dumps(header).encode()).hexdigest()


def test_converted_writers_leave_readable_files(tmp_path):
    import numpy as np
    import torch

    from sweeper.kinds.refstats import _save_atomic as save_refstats
    from trainables.metrics.fid_weights import _save_atomic as save_weights

    previous = os.umask(0o077)
    try:
        save_refstats(tmp_path / "r" / "k.npz", mu=np.zeros(3), key=np.array("k"))
        save_weights({"w": torch.ones(2)}, tmp_path / "w" / "c.pth")
    finally:
        os.umask(previous)
    with np.load(tmp_path / "r" / "k.npz") as entry:
        assert str(entry["key"]) == "k" and entry["mu"].shape == (3,)
    assert torch.equal(torch.load(tmp_path / "w" / "c.pth", weights_only=True)["w"], torch.ones(2))
    for path in (tmp_path / "r" / "k.npz", tmp_path / "w" / "c.pth"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 and os.listdir(path.parent) == [path.name]


def test_resume_state_files_are_written_whole_on_a_local_filesystem(tmp_path):
    import pyarrow.fs

    from trainables.cache import write_whole  # what resume's state files and the search state are written with

    fs, folder = pyarrow.fs.FileSystem.from_uri(str(tmp_path))
    write_whole(fs, f"{folder}/sweeper.json", b'{"status": "running"}')
    write_whole(fs, f"{folder}/sweeper.json", b'{"status": "finished"}')
    assert Path(tmp_path / "sweeper.json").read_bytes() == b'{"status": "finished"}'
    assert os.listdir(tmp_path) == ["sweeper.json"]
