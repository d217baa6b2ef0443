"""The stat index in front of the content key: an unchanged folder is a cache hit without opening a
single source file; a changed size or mtime, an added, removed or renamed file is a miss that
hashes the content again; the key is the same content key as without the index."""
import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.data import prepare
from trainables.data.prepare import FORMAT, prepared_dir
from trainables.data.stat_index import RACY_NS, index_dir

HOUR_NS = 3600 * 10**9
_WATCHERS: list[tuple[str, list[str]]] = []
_HOOKED: list[bool] = []


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    # Each test sees only its own cache entries and index records.
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))


def _audit(event, args):
    # Python's own audit events: every open() of a file by path (builtins, io, os.open, Pillow's
    # reads) raises "open"; stat and scandir do not. A real count, not a patched reader.
    if event != "open" or not _WATCHERS or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.realpath(os.fsdecode(args[0]))
    for root, opened in _WATCHERS:
        if path.startswith(root):
            opened.append(path)


@contextlib.contextmanager
def _opens_under(folder: Path):
    if not _HOOKED:  # installed on first use: a hook cannot be removed, and it sees every event
        sys.addaudithook(_audit)
        _HOOKED.append(True)
    watch = (str(folder.resolve()) + os.sep, [])
    _WATCHERS.append(watch)
    try:
        yield watch[1]
    finally:
        _WATCHERS.remove(watch)


def _image(path: Path, seed: int, fmt: str):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path, fmt)


def _age(*paths: Path, ns_ago: int = HOUR_NS):
    # A dataset usually sits on disk long before it is prepared; files written just now are
    # "racy" and not recorded (test_files_written_just_now_are_not_recorded).
    t = time.time_ns() - ns_ago
    for p in paths:
        os.utime(p, ns=(t, t))


def _pets(root: Path) -> Path:
    for i in range(3):
        _image(root / "cat" / f"c{i}.png", i, "PNG")
    for i in range(2):
        _image(root / "dog" / f"d{i}.jpg", 10 + i, "JPEG")
    _age(*_files(root))
    return root


def _files(root: Path) -> list[Path]:
    return sorted(f for f in root.rglob("*") if f.is_file())


def _content_key(root: Path, resolution: int, class_name=None) -> str:
    """The content key as documented (trainables.data.prepare), computed here from the bytes."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    header = {"format": FORMAT, "resolution": resolution, "classes": classes, "class_name": class_name}
    key = hashlib.sha256(json.dumps(header).encode())
    for f in _files(root):
        if class_name in (None, f.parent.name):
            key.update(f"{f.parent.name}\0{f.parent.name}/{f.name}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n"
                       .encode())
    return key.hexdigest()


def test_unchanged_folder_hits_without_opening_a_file(tmp_path):
    pets = _pets(tmp_path / "pets")
    with _opens_under(pets) as opened:
        first = prepare(str(pets), 20)
    assert not first.from_cache and len(opened) >= 5  # the watch sees reads: the check below can fail
    assert first.key == _content_key(pets, 20)
    assert [p.suffix for p in index_dir().iterdir()] == [".json"]  # one record, no temporary file left

    with _opens_under(pets) as opened:
        again = prepare(str(pets), 20)
    assert opened == []
    assert again.from_cache and again.key == first.key and again.data.fingerprint == first.data.fingerprint
    np.testing.assert_array_equal(again.data.images, first.data.images)


def test_the_index_never_reads_content_so_a_same_size_same_mtime_edit_is_not_seen(tmp_path):
    # The documented trust in (size, mtime_ns), and the proof that a hit reads no content:
    # had it read c0.png, it would have found the new bytes.
    pets = _pets(tmp_path / "pets")
    first = prepare(str(pets), 20)
    target = pets / "cat" / "c0.png"
    st = target.stat()
    other = pets / "cat" / "c1.png"
    assert other.stat().st_size == st.st_size  # same-size noise images: swap the bytes
    target.write_bytes(other.read_bytes())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert prepare(str(pets), 20).key == first.key != _content_key(pets, 20)


@pytest.mark.parametrize("change", ["mtime", "content", "add", "remove", "rename"])
def test_a_changed_listing_misses_and_hashes_the_content_again(tmp_path, change):
    pets = _pets(tmp_path / "pets")
    first = prepare(str(pets), 20)
    target = pets / "cat" / "c0.png"
    if change == "mtime":
        _age(target, ns_ago=2 * HOUR_NS)  # only the timestamp: same bytes
    elif change == "content":
        pixels = np.asarray(Image.open(target)).copy()
        pixels[0, 0, 0] ^= 1
        Image.fromarray(pixels).save(target)
        _age(target, ns_ago=3 * HOUR_NS)  # an mtime of its own, whatever the filesystem's granularity
    elif change == "add":
        _image(pets / "dog" / "d9.png", 99, "PNG")
        _age(pets / "dog" / "d9.png")
    elif change == "remove":
        target.unlink()
    else:
        target.rename(pets / "cat" / "c9.png")

    with _opens_under(pets) as opened:
        second = prepare(str(pets), 20)
    assert len(opened) >= len(_files(pets))  # every file was read to hash it
    assert second.key == _content_key(pets, 20)
    if change == "mtime":  # same content: the same cache entry, found by its content
        assert second.key == first.key and second.from_cache
    else:
        assert second.key != first.key and not second.from_cache
        assert second.data.fingerprint != first.data.fingerprint
    # The new listing is recorded: the next prepare opens nothing.
    with _opens_under(pets) as opened:
        assert prepare(str(pets), 20).key == second.key
    assert opened == []


def test_key_from_the_index_is_the_content_key_shared_with_copies(tmp_path):
    pets = _pets(tmp_path / "pets")
    prepare(str(pets), 20)
    from_index = prepare(str(pets), 20)
    copy = tmp_path / "elsewhere" / "pets"
    shutil.copytree(pets, copy)  # new mtimes: hashed, and the same content finds the same entry
    from_content = prepare(str(copy), 20)
    assert from_content.from_cache and from_content.key == from_index.key == _content_key(pets, 20)


# Just now: it could still be rewritten within its mtime granule; in the future: a clock we cannot trust.
@pytest.mark.parametrize("ns_ago", [RACY_NS // 4, -HOUR_NS], ids=["just-now", "future"])
def test_files_written_just_now_are_not_recorded(tmp_path, ns_ago):
    pets = _pets(tmp_path / "pets")
    _age(pets / "cat" / "c0.png", ns_ago=ns_ago)
    prepare(str(pets), 20)
    assert not list(index_dir().glob("*.json"))
    with _opens_under(pets) as opened:
        assert prepare(str(pets), 20).from_cache
    assert opened  # hashed again, as without an index
    _age(pets / "cat" / "c0.png")
    prepare(str(pets), 20)
    with _opens_under(pets) as opened:
        prepare(str(pets), 20)
    assert opened == []


@pytest.mark.parametrize("record", [b"\x00\xff not json", b"[1, 2]", "key"])
def test_a_corrupt_or_foreign_record_is_a_miss(tmp_path, record):
    pets = _pets(tmp_path / "pets")
    first = prepare(str(pets), 20)
    (path,) = index_dir().glob("*.json")
    if record == "key":  # well-formed, but its key is a path out of the cache to a file that exists
        shutil.copy(first.path, prepared_dir().parent / "elsewhere.arrow")
        path.write_text(json.dumps({**json.loads(path.read_text()), "key": "../elsewhere"}))
    else:
        path.write_bytes(record)
    with _opens_under(pets) as opened:
        again = prepare(str(pets), 20)
    assert opened and again.from_cache and again.key == first.key
    assert json.loads(path.read_text())["key"] == first.key  # rewritten whole


def test_a_record_for_another_folder_or_resolution_is_not_used(tmp_path):
    pets = _pets(tmp_path / "pets")
    prepare(str(pets), 20)
    (path,) = index_dir().glob("*.json")
    record = json.loads(path.read_text())
    with _opens_under(pets) as opened:
        prepare(str(pets), 16)  # another resolution: another record
    assert opened and len(list(index_dir().glob("*.json"))) == 2
    path.write_text(json.dumps({**record, "source": str(tmp_path / "other")}))
    with _opens_under(pets) as opened:
        prepare(str(pets), 20)
    assert opened


def test_a_removed_cache_entry_is_rebuilt_from_the_files(tmp_path):
    pets = _pets(tmp_path / "pets")
    first = prepare(str(pets), 20)
    first.path.unlink()
    again = prepare(str(pets), 20)
    assert not again.from_cache and again.key == first.key
    np.testing.assert_array_equal(again.data.images, first.data.images)


def test_a_class_subset_ignores_changes_to_other_classes(tmp_path):
    pets = _pets(tmp_path / "pets")
    cats = prepare(f"{pets}:cat", 20)
    assert cats.key == _content_key(pets, 20, "cat")
    _age(pets / "dog" / "d0.jpg", ns_ago=2 * HOUR_NS)
    with _opens_under(pets) as opened:
        assert prepare(f"{pets}:cat", 20).key == cats.key
    assert opened == []


def test_a_dangling_link_keeps_the_folder_out_of_the_index(tmp_path):
    # It is skipped as unreadable, which its stat cannot tell apart from a file that comes back.
    pets = _pets(tmp_path / "pets")
    (pets / "dog" / "gone.jpg").symlink_to(pets / "nowhere.jpg")
    assert prepare(str(pets), 20).data.skipped == {"unreadable": 1}
    assert not list(index_dir().glob("*.json"))


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
def test_a_folder_with_an_unreadable_file_is_not_recorded(tmp_path, monkeypatch):
    # A Unix socket named like an image: stat works, open fails, even for root (unlike chmod 0).
    pets = _pets(tmp_path / "pets")
    monkeypatch.chdir(pets / "dog")  # a relative name: socket paths are limited to ~100 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock.png")
        _age(pets / "dog" / "sock.png")  # else it is too new to be recorded anyway
        assert prepare(str(pets), 20).data.skipped == {"unreadable": 1}
    assert not list(index_dir().glob("*.json"))


def test_a_file_skipped_as_unreadable_is_read_again_once_it_is_readable(tmp_path, monkeypatch):
    # Permissions leave size and mtime alone: a record would keep the file skipped after the fix.
    # chmod 0 does not stop root (CI runs as root), so the folder listing reads each file with the
    # builtin open (trainables.data.listing._read_file), and that open refuses this one path with
    # the PermissionError a chmod 0 gives, until the test makes it readable again.
    import builtins

    pets = _pets(tmp_path / "pets")
    locked = pets / "dog" / "d0.jpg"
    real_open, refused = builtins.open, []

    def open_refusing_locked(file, *args, **kwargs):
        if refused is not None and isinstance(file, (str, bytes, os.PathLike)) \
                and os.path.realpath(os.fsdecode(file)) == str(locked.resolve()):
            refused.append(file)
            raise PermissionError(13, "Permission denied", os.fsdecode(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_refusing_locked)
    assert prepare(str(pets), 20).data.skipped == {"unreadable": 1}
    assert refused  # the refusal was what made it unreadable
    assert not list(index_dir().glob("*.json"))
    refused = None  # readable again: same size, same mtime
    again = prepare(str(pets), 20)
    assert len(again.data) == 5 and again.data.skipped == {}


def test_an_archive_is_indexed_by_its_own_size_and_mtime(tmp_path):
    pets = _pets(tmp_path / "pets")
    archive = tmp_path / "pets.zip"

    def write_zip(swap):
        with zipfile.ZipFile(archive, "w") as zf:
            for f in _files(pets):
                zf.writestr(f"pets/{f.relative_to(pets)}", swap.get(f.name, f).read_bytes())
        _age(archive)

    write_zip({})
    first = prepare(str(archive), 20)
    assert first.key == _content_key(pets, 20)
    mtime = archive.stat().st_mtime_ns
    size = archive.stat().st_size
    # The same-size, same-mtime edit is not seen (nothing read); a new mtime is.
    write_zip({"c0.png": pets / "cat" / "c1.png"})
    assert archive.stat().st_size == size
    os.utime(archive, ns=(mtime, mtime))
    assert prepare(str(archive), 20).key == first.key
    _age(archive, ns_ago=2 * HOUR_NS)
    changed = prepare(str(archive), 20)
    assert changed.key != first.key and not changed.from_cache


@pytest.mark.parametrize("parts", [
    ("a.jpg",), ("cat", "A.JPG"), ("cat", "x.jpeg"), ("x.",), ("noext",), ("jpg",), ("a.tar.png",), (".png",),
    (".hidden", "a.png"), ("cat", ".a.png"), ("__MACOSX", "cat", "a.png"), ("cat", "a.png.txt"), ("a b.webp",),
    ("cat", "..png"), ("cat.png", "x.gif"), ("a.PnG",),
])
def test_the_fast_image_filter_keeps_the_layout_rules(parts):
    # The listing runs on every cache hit, so its filter is hand-tuned; the rule it must keep,
    # written the obvious way: no hidden or __MACOSX part, an image extension (case-insensitive).
    from pathlib import PurePosixPath

    from trainables.data.decode import EXTENSIONS
    from trainables.data.listing import _visible_image

    rule = (not any(p.startswith(".") or p == "__MACOSX" for p in parts)
            and PurePosixPath(parts[-1]).suffix.lower() in EXTENSIONS)
    assert _visible_image(parts) == rule


def test_a_cache_hit_in_a_fresh_process_imports_no_pandas(tmp_path):
    # pyarrow's to_numpy on a column imports pandas: ~0.4 s of a fresh process's first hit.
    import subprocess

    pets = _pets(tmp_path / "pets")
    prepare(str(pets), 20)
    code = ("import sys; from trainables.data import prepare\n"
            f"assert prepare({str(pets)!r}, 20).from_cache\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pandas'))")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=False,
                           cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "[]"
