"""Where sweeper keeps what it computes once ($SWEEPER_CACHE, default ~/.cache/sweeper), and the
mechanics every cache entry shares: whole-or-nothing file writes, content hashes, and the check
made each time an entry is used (`cached_entry`).

Every entry records the sha256 of what it serves when it is written, and every use hashes what it
is about to serve again and compares (`check_digest`). Where that record lives follows the entry's
format: inside the file, written in the same atomic rename, where the format has room for it
(prepared data: the pixel fingerprint in the Arrow metadata; reference statistics: a `sha256`
member of the .npz); in the file's name where the name is its hash (shipped files); in a sidecar
`<entry>.sha256` for files another library reads by path (converted FID weights, a torch file).

Decision: re-hash on every use, no size+mtime index. Each entry is read whole right after it is
checked (prepared data goes to Ray's object store, statistics and weights are loaded), so the hash
is one more pass over bytes that are about to be in memory anyway (~0.6 s per GB at sha256's ~1.7
GB/s on one core), paid once per sweep for the data and the statistics and once per trial process
for the weights. A size+mtime index would miss what this check is for: bytes that changed while
the size and mtime did not (a disk that rots, an overwrite that restores the old mtime).
"""
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    return Path(os.environ.get("SWEEPER_CACHE") or "~/.cache/sweeper").expanduser()


def offline() -> bool:
    """SWEEPER_OFFLINE=1: never touch the network (tests, air-gapped clusters)."""
    return os.environ.get("SWEEPER_OFFLINE") == "1"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` whole, or not at all, when the `with` ends.

    Written to a uniquely named temp file beside `path` (so concurrent writers never collide, and
    the rename stays on one filesystem), fsync'ed, made 0644, then renamed over `path`. On any
    exception the temp file is removed, `path` is left as it was, and the exception goes on.
    Parent folders are created.
    """
    # Hand-written: the standard library has no atomic file write.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, and the name cut short so that a long target name cannot exceed NAME_MAX.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:64]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a shared cache must stay readable by other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """`data` written to `path` through `atomic_writer`."""
    with atomic_writer(path) as out:
        out.write(data)


def content_key(obj) -> str:
    """sha256 hex of `json.dumps(obj, sort_keys=True).encode()`: json's default separators and
    ASCII escaping, keys sorted, so equal content gives one key whatever the dicts' key order.

    Cache entries on users' disks are named by these keys: changing the serialisation orphans them.
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of the file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_whole(fs, path: str, data: bytes) -> None:
    """`data` at `path` on a pyarrow filesystem, seen whole or not at all: atomically on a local
    disk (a reader sees the old file or the new one), and as an object store's put, atomic already."""
    import pyarrow.fs

    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        write_atomic(path, data)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


class DamagedEntry(Exception):
    """A cache entry that is not what was written; its message is one line saying what is wrong."""


def check_digest(actual: str, recorded: str | None) -> str:
    """`actual` (a sha256 hex of what an entry serves) if it equals the one `recorded` when the
    entry was written; otherwise DamagedEntry, also when nothing was recorded."""
    if not recorded:
        raise DamagedEntry("no sha256 recorded with it")
    if actual != recorded:
        raise DamagedEntry(f"its content hashes to {actual[:16]}..., not the recorded {str(recorded)[:16]}...")
    return actual


def cached_entry(path: str | os.PathLike, load: Callable[[Path], T], what: str, rebuilding: str) -> T | None:
    """The entry at `path` as `load` reads it, or None when the caller must build it.

    `load` reads the entry and checks it with `check_digest` (raising DamagedEntry, or any other
    error, when it cannot). Nothing at `path` is a plain miss. Anything `load` raises means damage
    (a cut-short file, other bytes, a directory or a dangling link in the file's place, a missing
    sidecar): one warning line "<what> <path> damaged (<reason>); <rebuilding>", the entry and its
    sidecar are removed, and None is returned, so a damaged entry is rebuilt, never used.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return None
    try:
        return load(path)
    except Exception as exc:  # every way a damaged file fails to load means the same: build it again
        discard(path, what, one_line(exc), rebuilding)
        return None


def discard(path: str | os.PathLike, what: str, reason: str, rebuilding: str) -> None:
    """One warning line naming the damaged entry and what is wrong, then the entry and its sidecar
    removed (a directory in a file's place too: no atomic rename can replace one)."""
    log.warning("%s %s damaged (%s); %s", what, path, reason, rebuilding)
    for stale in (Path(path), sidecar_path(path)):
        _remove(stale)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def sidecar_path(path: str | os.PathLike) -> Path:
    """`<path>.sha256`: where an entry that must stay a plain file of a foreign format (a torch
    file read by path) records the sha256 of its bytes."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex in the sidecar of `path`; DamagedEntry if it is missing, unreadable or malformed."""
    sidecar = sidecar_path(path)
    try:
        text = sidecar.read_text().strip()
    except FileNotFoundError:
        raise DamagedEntry(f"no {sidecar.name} beside it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedEntry(f"{sidecar.name} unreadable: {one_line(exc)}") from None
    if not _SHA256.fullmatch(text):
        raise DamagedEntry(f"{sidecar.name} holds no sha256")
    return text


def write_sidecar(path: str | os.PathLike, digest: str) -> None:
    """Record `digest` in the sidecar of `path`, atomically. Write the entry first: a crash between
    the two leaves an entry without a sidecar, which its next use rebuilds."""
    sidecar = sidecar_path(path)
    if sidecar.is_dir() and not sidecar.is_symlink():  # a rename cannot replace a directory
        _remove(sidecar)
    write_atomic(sidecar, digest.encode())


def _remove(path: Path) -> None:
    # Best effort: another process may have removed it first, and one we may not remove is replaced
    # by the rebuild's rename (or that rename fails with an error naming the path).
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
