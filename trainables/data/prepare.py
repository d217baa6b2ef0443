"""Prepare a dataset once: list its files, fingerprint their content, decode them on all cores and
store the result as one Arrow IPC file in the cache; later loads memory-map that file.

The cache key hashes the files' bytes, class names and names inside the source (never the path to
the source, nor timestamps) with the resolution, so the same photos copied elsewhere or zipped hit
the same entry, and a one-pixel edit misses it. A source whose listing (names, sizes, mtimes) is
unchanged since it was last hashed takes that key from trainables.data.stat_index without reading
a file, so a cache hit costs a listing, not a read of the whole source. Writes go to a temporary
file renamed into place, under a file lock: two processes preparing the same data decode it once
and both read one complete file. A source that fails (too few files, none decodable) leaves nothing in the cache.
Every load checks the entry: its pixels, labels and class names must hash to the fingerprint
recorded in the file when it was written (trainables.cache.cached_entry); a damaged entry is
prepared again from the source, with a one-line warning, and never served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
from filelock import FileLock
from tqdm import tqdm

from trainables.cache import atomic_writer, cache_dir, cached_entry, check_digest
from trainables.data import stat_index
from trainables.data.decode import decode_many
from trainables.data.imageset import DatasetError, ImageSet, content_fingerprint, make_imageset
from trainables.data.listing import Listing
from trainables.data.toy_faces import CLASSES as TOY_CLASSES
from trainables.data.toy_faces import toy_faces

FORMAT = "sweeper-prepared-v1"  # bump when decoding or the file layout changes: old entries then miss
KEEP_BYTES = 512 << 20  # files read for the fingerprint are kept for decoding up to this much, else re-read
CHUNK = 32  # images per message to a decoding worker
PARALLEL_FROM = 256  # below this many files, starting worker processes costs more than it saves
EXAMPLES = 5  # skipped files named per reason in the summary


@dataclass(frozen=True)
class Prepared:
    data: ImageSet
    path: Path  # the Arrow file in the cache
    key: str  # fingerprint of the source content: the cache key
    source: str
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    from_cache: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        d = self.data
        counts = ", ".join(f"{d.classes[c]} {n}" for c, n in zip(*np.unique(d.labels, return_counts=True)))
        lines = [f"{self.source}: {len(d)} images at {d.resolution}x{d.resolution} ({counts})",
                 f"  {'loaded from cache' if self.from_cache else 'prepared'} in {self.seconds:.1f} s: {self.path}",
                 f"  fingerprint {d.fingerprint[:16]}, cache key {self.key[:16]}"]
        for reason, n in sorted(d.skipped.items()):
            lines.append(f"  skipped {n} {reason}: {', '.join(self.skipped_examples.get(reason, []))}"
                         + (", ..." if n > EXAMPLES else ""))
        return "\n".join(lines)


def prepared_dir() -> Path:
    return cache_dir() / "prepared"


def prepare_files(path: str | os.PathLike, resolution: int, class_name: str | None = None, *,
                  workers: int | None = None, progress: bool | None = None, min_images: int = 1) -> Prepared:
    """A folder, .zip or .tar(.gz) of images (layout rules in trainables.data.listing).

    Fewer than `min_images` image files, or usable images once decoded, is a DatasetError raised
    before anything is written to the cache.
    """
    start = time.perf_counter()
    _check_resolution(resolution)
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    listed_at_ns = time.time_ns()  # before any stat: see stat_index.store
    listing = Listing(path)
    classes = listing.classes
    entries = listing.entries
    if class_name is not None:
        if class_name not in classes:
            raise DatasetError(f"no class {class_name!r} in {path}; classes: {', '.join(classes) or '(none)'}")
        entries = [e for e in entries if e.cls == class_name]
    source = f"{path}:{class_name}" if class_name else str(path)
    if len(entries) < min_images:  # said before reading a byte
        raise DatasetError(f"{source}: {_images(len(entries))} (.png, .jpg, ...), at least {min_images} needed"
                           if entries else f"no image files (.png, .jpg, ...) in {source}")

    # The content key, from the stat index when the listing is unchanged (no file opened), else
    # from one pass over the bytes (kept in memory for decoding while small).
    header = {"format": FORMAT, "resolution": resolution, "classes": classes, "class_name": class_name}
    options = {"format": FORMAT, "resolution": resolution, "class_name": class_name}
    stats = listing.stats(entries)
    digest = stat_index.listing_digest(header, [e.name for e in entries], stats)
    key = stat_index.lookup(path, options, digest)
    from_index = key is not None and (prepared_dir() / f"{key}.arrow").exists()
    raw = None  # no bytes in hand: if the entry vanishes before we load it, decoding reads the files
    if not from_index:
        key, raw = _content_key(listing, entries, header)

    def build(scratch: Path):
        items = sorted(raw.items()) if raw is not None else listing.read(entries)
        labels = np.array([classes.index(e.cls) for e in entries], dtype=np.int64)
        images, ok, skipped, examples = _decode_all(items, entries, resolution, workers, progress, source, scratch)
        if not ok.any():
            raise DatasetError(f"no usable images in {source} (skipped: {_describe(skipped)})")
        if ok.sum() < min_images:
            raise DatasetError(f"{source}: {_images(int(ok.sum()))} usable, at least {min_images} needed "
                               f"(skipped: {_describe(skipped)})")
        names = [e.name for e, good in zip(entries, ok) if good]
        return make_imageset(images[ok] if not ok.all() else images, labels[ok], classes, skipped), names, examples

    prepared = _cached(key, source, build, start)
    # Permissions are not in the listing: a file skipped as unreadable could be readable next time.
    if not from_index and "unreadable" not in prepared.data.skipped:
        stat_index.store(path, options, digest, key, stats, listed_at_ns)
    return prepared


def _content_key(listing: Listing, entries, header: dict) -> tuple[str, dict | None]:
    """sha256 of the header and every entry's class, name and bytes; with the bytes by entry
    index when they fit in KEEP_BYTES (else None: decoding reads the files again)."""
    key_hash = hashlib.sha256(json.dumps(header).encode())
    raw, kept, digests = {}, 0, [""] * len(entries)
    for i, data in listing.read(entries):
        digests[i] = data if isinstance(data, str) else hashlib.sha256(data).hexdigest()
        kept += 0 if isinstance(data, str) else len(data)
        if raw is not None:
            raw[i] = data
            if kept > KEEP_BYTES:
                raw = None  # too large to keep: decoding re-reads every file, so free these now
    for entry, digest in zip(entries, digests):
        key_hash.update(f"{entry.cls}\0{entry.name}\0{digest}\n".encode())
    return key_hash.hexdigest(), raw


def prepare_toy(n: int, resolution: int, seed: int = 0, class_name: str | None = None) -> Prepared:
    """toy-faces, generated once per (n, resolution, seed, class) and then loaded from the cache."""
    start = time.perf_counter()
    _check_resolution(resolution)
    if class_name is not None and class_name not in TOY_CLASSES:
        raise DatasetError(f"toy-faces has no class {class_name!r}; classes: {', '.join(TOY_CLASSES)}")
    header = {"format": FORMAT, "toy-faces": 1, "n": n, "resolution": resolution, "seed": seed, "class": class_name}
    key = hashlib.sha256(json.dumps(header).encode()).hexdigest()
    source = "toy-faces" + (f":{class_name}" if class_name else "")

    def build(scratch: Path):
        data = toy_faces(n, resolution, seed, class_name=class_name)
        return data, [f"{data.classes[c]}/{i:06d}" for i, c in enumerate(data.labels)], {}

    return _cached(key, source, build, start)


def _cached(key: str, source: str, build, start: float) -> Prepared:
    path = prepared_dir() / f"{key}.arrow"
    created = [p for p in (path.parent, *path.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        with lock:
            # Whoever held the lock before us may just have written it.
            hit = cached_entry(path, load_prepared, "prepared data", f"preparing {source} again")
            if hit is not None:
                data, examples = hit
                return Prepared(data, path, key, source, examples, True, time.perf_counter() - start)
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".scratch-") as scratch:
                _write(path, *build(Path(scratch)))
            # Read back like any cache hit: the same memory-mapped, read-only arrays either way.
            data, examples = load_prepared(path)
    except BaseException:
        # Leave no trace of a failed build. Removing a lock file another process waits on is
        # safe here: every write is a rename of a complete file, so two builders only duplicate work.
        Path(lock.lock_file).unlink(missing_ok=True)
        for folder in created:  # innermost first; only those this call made, and only if empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return Prepared(data, path, key, source, examples, False, time.perf_counter() - start)


def load_prepared(path: Path) -> tuple[ImageSet, dict[str, list[str]]]:
    """The ImageSet of a prepared file; its images are a read-only view of the memory-mapped file.

    Checked before it is returned: the mapped pixels, labels and class names are hashed again and
    must give the fingerprint recorded in the file (DamagedEntry otherwise). The very bytes that
    are hashed are the ones served: no second read by path.
    """
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    meta = json.loads(table.schema.metadata[b"sweeper"])
    column = table.column("image")
    if column.num_chunks != 1:
        raise DatasetError(f"{path}: not a file written by sweeper (expected one record batch)")
    chunk, r = column.chunk(0), meta["resolution"]
    width = 3 * r * r
    images = np.frombuffer(chunk.buffers()[1], dtype=np.uint8, count=len(chunk) * width,
                           offset=chunk.offset * width).reshape(len(chunk), 3, r, r)
    # Read like the images, not with to_numpy(): ChunkedArray.to_numpy imports pandas, ~0.4 s of
    # the first cache hit in a fresh process (`sweeper data prepare`, a node's first trial).
    label_chunk = table.column("label").chunk(0)
    labels = np.frombuffer(label_chunk.buffers()[1], dtype=np.int64, count=len(label_chunk),
                           offset=label_chunk.offset * 8)
    check_digest(content_fingerprint(images, labels, tuple(meta["classes"])), meta.get("fingerprint"))
    data = make_imageset(images, labels, meta["classes"], meta["skipped"], fingerprint=meta["fingerprint"])
    return data, meta["skipped_examples"]


def _write(path: Path, data: ImageSet, names: list[str], examples: dict) -> None:
    meta = {"format": FORMAT, "resolution": data.resolution, "classes": data.classes, "fingerprint": data.fingerprint,
            "skipped": data.skipped, "skipped_examples": examples}
    width = 3 * data.resolution ** 2
    images = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(data), [None, pa.py_buffer(data.images)])
    table = pa.table({"image": images, "label": pa.array(data.labels, pa.int64()), "source": pa.array(names)},
                     metadata={"sweeper": json.dumps(meta)})
    with atomic_writer(path) as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)  # one record batch: the images load back as one contiguous view


def _decode_all(items, entries, resolution, workers, progress, source, scratch: Path):
    shape = (len(entries), 3, resolution, resolution)
    workers = workers or os.cpu_count() or 1
    output = None
    if workers > 1 and len(entries) >= PARALLEL_FROM:
        # Workers write the pixels into this file themselves (see decode_many).
        output = (str(scratch / "images.u8"), len(entries))
        images = np.memmap(output[0], np.uint8, "w+", shape=shape)
    else:
        images = np.empty(shape, dtype=np.uint8)
    ok = np.zeros(len(entries), dtype=bool)
    skipped, examples = {}, {}
    # No tqdm object at all when hidden: even a disabled one starts tqdm's monitor thread, and a
    # process with threads must spawn its workers instead of forking them (_pool_context).
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(entries), desc=f"decoding {source}", unit="img") if show else None
    with bar or contextlib.nullcontext():
        for slot, result in _decode_chunks(items, resolution, workers, output):
            if isinstance(result, str):
                skipped[result] = skipped.get(result, 0) + 1
                if len(examples.setdefault(result, [])) < EXAMPLES:
                    examples[result].append(entries[slot].name)
                continue
            if result is not None:
                images[slot] = result
            ok[slot] = True
            if bar:
                bar.update()
    return images, ok, skipped, examples


def _decode_chunks(items, resolution: int, workers: int, output):
    """(slot, image, None or reason) for every item; in worker processes when `output` is a file."""
    items = iter(items)
    chunks = iter(lambda: list(islice(items, CHUNK)), [])
    decode = partial(decode_many, resolution=resolution, output=output)
    if output is None:
        for chunk in chunks:
            yield from decode(chunk)
        return
    with ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
        pending = deque()  # bounded, so a large source is never read into memory all at once
        for chunk in chunks:
            pending.append(pool.submit(decode, chunk))
            if len(pending) >= 4 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _pool_context():
    # fork starts workers at once; spawn re-imports the caller's main module (torch, for the CLI) in
    # every worker. But forking a process that runs other threads (a Ray driver, torch's pools) can
    # deadlock the child, so fork only while this process is single-threaded.
    if "fork" in get_all_start_methods() and threading.active_count() == 1:
        return get_context("fork")
    return get_context("spawn")


def _check_resolution(resolution) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise DatasetError(f"resolution must be a positive integer, got {resolution!r}")


def _images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"


def _describe(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"
