"""Where sweeper keeps what it computes once ($SWEEPER_CACHE, default ~/.cache/sweeper), and the
two mechanics every cache entry shares: whole-or-nothing file writes and content hashes."""
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


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
