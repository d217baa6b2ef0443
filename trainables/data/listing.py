"""The image files of a folder, a .zip or a .tar/.tar.gz, with their classes, and their bytes.

Layout rules, the same for all three (only files with an image extension count; hidden files and
folders, `__MACOSX` included, are ignored):
- an archive whose files all sit in one top folder (`afhq.zip` -> `afhq/...`) is read from inside it;
- if every file sits under a split folder (`train`, `test`, `val`, ...), only `train/` is read when
  there is one, else all splits together: `cifar10-catdog/{train,test}/{cat,dog}` has classes cat, dog;
- then the first subfolder level is the class; files directly at the top take the source's name.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from trainables.data.decode import EXTENSIONS, Unreadable
from trainables.data.imageset import DatasetError

SPLITS = frozenset({"train", "test", "val", "valid", "validation"})
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


class Entry(NamedTuple):  # a tuple, not a dataclass: built once per file on every listing
    cls: str
    name: str  # path inside the source after the layout rules, e.g. "cat/flickr_cat_000002.jpg"
    member: object  # what the reader needs: a file's path (str), a zip member name or a TarInfo


class Listing:
    """The entries of one source, sorted by (class, name), and a reader for their bytes."""

    def __init__(self, path: Path):
        self.path = path
        self.kind = kind_of(path)
        if self.kind is None:
            raise DatasetError(f"not a folder, .zip or .tar(.gz): {path}")
        raw, top_name = self._files(), _stem(path)
        self.entries, self.source_name = _arrange(raw, top_name, strip_wrapper=self.kind != "folder")

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({e.cls for e in self.entries}))

    def read(self, entries: list[Entry]) -> Iterator[tuple[int, bytes | str]]:
        """(index into `entries`, bytes or skip reason), in the order cheapest for the source:
        a .tar.gz can only be read front to back, so its members come in archive order."""
        if self.kind == "folder":
            for i, e in enumerate(entries):
                yield i, _read_file(e.member)
        elif self.kind == "zip":
            with zipfile.ZipFile(self.path) as zf:
                for i, e in enumerate(entries):
                    yield i, _guarded(zf.read, e.member)
        else:
            order = sorted(range(len(entries)), key=lambda i: entries[i].member.offset)
            with tarfile.open(self.path) as tf:
                for i in order:
                    yield i, _guarded(lambda m: tf.extractfile(m).read(), entries[i].member)

    def stats(self, entries: list[Entry]) -> list[tuple[int, int]] | None:
        """(size, mtime_ns) of the file holding each entry, from stat alone (nothing is opened): its
        own file in a folder, the archive itself in a .zip or .tar. None if one cannot be stat'ed (a
        dangling link, a file gone since listing): only reading it can tell what it holds."""
        try:
            if self.kind == "folder":
                return [_size_and_mtime(e.member) for e in entries]
            return [_size_and_mtime(self.path)] * len(entries)
        except OSError:
            return None

    def _files(self) -> list[tuple[tuple[str, ...], object]]:
        if self.kind == "folder":
            found = []
            # Plain strings, no Path per file: a cache hit lists the folder every time, and
            # pathlib made the listing of 5,000 files cost more than reading them once did.
            for dirpath, _, filenames in os.walk(self.path):
                rel = Path(dirpath).relative_to(self.path).parts
                found += [((*rel, name), os.path.join(dirpath, name)) for name in filenames]
            return found
        try:
            if self.kind == "zip":
                with zipfile.ZipFile(self.path) as zf:
                    return [(PurePosixPath(i.filename).parts, i.filename) for i in zf.infolist() if not i.is_dir()]
            with tarfile.open(self.path) as tf:
                return [(PurePosixPath(m.name).parts, m) for m in tf.getmembers() if m.isfile()]
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f"cannot read archive {self.path}: {e}") from None


def kind_of(path: Path) -> str | None:
    if path.is_dir():
        return "folder"
    name = path.name.lower()
    if path.is_file() and name.endswith(".zip"):
        return "zip"
    if path.is_file() and name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    return None


def _stem(path: Path) -> str:
    name = path.resolve().name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _arrange(files, top_name: str, strip_wrapper: bool) -> tuple[list[Entry], str]:
    files = [(parts, m) for parts, m in files if _visible_image(parts)]
    nested = files and all(len(parts) > 1 for parts, _ in files)
    if strip_wrapper and nested and len({parts[0] for parts, _ in files}) == 1:
        top_name = files[0][0][0]
        files = [(parts[1:], m) for parts, m in files]
        nested = all(len(parts) > 1 for parts, _ in files)
    if nested and {parts[0] for parts, _ in files} <= SPLITS:
        if any(parts[0] == "train" for parts, _ in files):
            files = [(parts, m) for parts, m in files if parts[0] == "train"]
        files = [(parts[1:], m) for parts, m in files]
    entries = [Entry(parts[0] if len(parts) > 1 else top_name, "/".join(parts), m) for parts, m in files]
    return sorted(entries, key=lambda e: (e.cls, e.name)), top_name


def _visible_image(parts: tuple[str, ...]) -> bool:
    last = parts[-1]
    # last[last.rfind("."):] is os.path.splitext's extension for any name that is not hidden (at
    # a third of its cost, which counts on every listing); hidden names fail the test after it.
    return (last[last.rfind("."):].lower() in EXTENSIONS and "__MACOSX" not in parts
            and not any(p.startswith(".") for p in parts))


def _size_and_mtime(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)  # follows links, like reading does
    return st.st_size, st.st_mtime_ns


def _read_file(path: str) -> bytes | str:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # a dangling link, a file without read permission, a folder named x.jpg
        return Unreadable("unreadable").reason


def _guarded(read, member) -> bytes | str:
    try:
        return read(member)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError):  # a CRC error, a cut-off archive
        return Unreadable("corrupt").reason
