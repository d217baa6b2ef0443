"""A shortcut to a source's content key from its listing: no file is opened on a hit.

The key of a prepared dataset hashes every byte of the source (trainables.data.prepare), so
checking it reads the whole source: ~0.5 s for 5,000 photos, minutes for a few hundred thousand.
This index remembers, per source path and options, a digest of the listing (every file's name,
size and mtime_ns, and the classes and options that go into the key) with the content key that
listing had. A later prepare whose listing has the same digest takes the key from here; a changed
size or mtime, an added, removed or renamed file gives another digest, and the content is hashed
again. The cache entries stay keyed by content: the index only saves computing that key.

Like make and rsync, it trusts that a file whose size and mtime_ns have not changed has not
changed. One record per source, written atomically. A record whose listing differs is a plain
miss; one that cannot be read, is not ours or names no well-formed key is damaged: a miss with a
one-line warning, and removed (trainables.cache.cached_entry), so the next `store` can write it
whole. Listings with files modified in the last RACY_NS are not recorded (see `store`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

from trainables.cache import DamagedEntry, cache_dir, cached_entry, content_key, write_atomic

INDEX_FORMAT = "sweeper-stat-index-v1"
# A file rewritten within one timestamp granule of its last write keeps its mtime (and maybe its
# size). Granules are at most 2 s (FAT; ext4 and xfs: a few ms): a listing is recorded only when
# every file is older than that, so any later write shows as a new mtime (git's "racily clean").
RACY_NS = 2 * 10**9
_KEY = re.compile(r"[0-9a-f]{64}")

Stat = tuple[int, int]  # (size, mtime_ns)


def index_dir() -> Path:
    return cache_dir() / "prepared" / "index"


def listing_digest(header: dict, names: Sequence[str], stats: Sequence[Stat] | None) -> str | None:
    """sha256 of everything the index compares: equal digests are equal listings. None without
    stats (a file could not be stat'ed): such a listing is never looked up nor recorded."""
    if stats is None:
        return None
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update("".join([f"{name}\0{size}\0{mtime_ns}\n" for name, (size, mtime_ns)
                           in zip(names, stats, strict=True)]).encode())
    return digest.hexdigest()


def lookup(source: Path, options: dict, digest: str | None) -> str | None:
    """The content key recorded for this listing of `source`, or None (a miss)."""
    if digest is None:
        return None
    record = cached_entry(_record_path(source, options), lambda path: _read_record(path, source, options),
                          "prepared-data index record", "hashing the source again")
    if record is None or record.get("listing") != digest:
        return None
    return record["key"]


def _read_record(path: Path, source: Path, options: dict) -> dict | None:
    """The record at `path` (named by `source` and `options`); None for a record of another index
    format (a plain miss, overwritten by the next `store`); DamagedEntry unless it is a JSON object
    for them with a well-formed key."""
    record = json.loads(path.read_text())
    if not isinstance(record, dict):
        raise DamagedEntry("not a JSON object")
    if record.get("format") != INDEX_FORMAT:
        return None
    if record.get("source") != _identity(source) or record.get("options") != options:
        raise DamagedEntry("a record for another source or other options")
    # A well-formed key only: it names a file in the cache, so it must never be a path.
    if not isinstance(record.get("key"), str) or not _KEY.fullmatch(record["key"]):
        raise DamagedEntry("no well-formed cache key in it")
    return record


def store(source: Path, options: dict, digest: str | None, key: str, stats: Sequence[Stat] | None,
          listed_at_ns: int) -> bool:
    """Record `key` for this listing, unless a file was modified too recently to trust its mtime
    (within RACY_NS before `listed_at_ns`, the wall-clock time taken before the files were
    stat'ed, or in the future). True when recorded."""
    if digest is None or stats is None or not _KEY.fullmatch(key):
        return False
    if any(mtime_ns > listed_at_ns - RACY_NS for _, mtime_ns in stats):
        return False
    record = {"format": INDEX_FORMAT, "source": _identity(source), "options": options, "listing": digest,
              "files": len(stats), "key": key}
    # The index only saves time: a cache folder we cannot write it into costs a re-hash next time,
    # never a failed prepare. Readers see the old record or the new one, never a part.
    with contextlib.suppress(OSError):
        write_atomic(_record_path(source, options), json.dumps(record).encode())
        return True
    return False


def _identity(source: Path) -> str:
    # Resolved, so "data/x", "./data/x" and a symlink to it share one record.
    return str(source.resolve())


def _record_path(source: Path, options: dict) -> Path:
    return index_dir() / f"{content_key([_identity(source), options])}.json"
