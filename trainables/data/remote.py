"""Known public datasets by name: downloaded once, checksum-verified and extracted into the cache.

Files land under `<cache>/datasets/<name>/`, where the cache is $SWEEPER_CACHE (default
~/.cache/sweeper). `fetch` returns a folder whose first-level subfolders are the classes;
`local_folder` resolves a parsed name (a split, a mirror) to such a folder.

Names (what `data` and `test_data` accept, parsed by `parse_named`):
  "cifar10", "afhq", "cat-faces-64"   the dataset's training split, every class
  "cifar10:dog", "cifar10:cat,dog"    only those classes (trainables.data.sources selects them)
  "afhq-cat", "afhq-dog"              aliases: one class of afhq
  "cifar10/test:cat,dog", "afhq-cat/test"
                                      the test split: for cifar10 its 10,000-image test batch, for afhq
                                      its `val` folder (the only held-out split AFHQ publishes);
                                      cat-faces-64 has none, and asking for it is an error.
The `/test` spelling reads like the folder it resolves to; a real folder of that name in the current
directory wins over the known name, as every existing path does.

Environment:
  SWEEPER_DATASETS=FOLDER  a local mirror: known names resolve from FOLDER and are never downloaded
                           nor copied into the cache (an air-gapped machine, CI). Layout:
                             FOLDER/<name>/ or else FOLDER/<name>-<anything>/ (the first such folder
                             in sorted order; an alias such as afhq-cat is looked up under its own
                             name first, then under its dataset's name, afhq), holding either class
                             folders (<class>/*.png|jpg, the training split; no test split) or
                             train/<class>/... and test/<class>/... (val/ is taken when there is no
                             test/). E.g. cifar10-catdog/{train,test}/{cat,dog}/*.png serves
                             "cifar10:cat", "cifar10:cat,dog" and "cifar10/test:cat,dog";
                             afhq-cat-128/train/cat/*.jpg serves "afhq-cat".
                           A name with no folder in the mirror is an error (one line, naming the name
                           and FOLDER), never a download: a mirror is set where downloading is not
                           wanted. An empty value is the same as unset.
  SWEEPER_OFFLINE=1        never download; a dataset not already in the cache is an error (a
                           mirror needs no network, so SWEEPER_DATASETS still resolves).
  SWEEPER_DATA_MIRROR=URL  download every file from `<URL>/<file name>` instead of its own URL
                           (an intranet copy, or file:///some/folder/); checksums still apply.
                           SWEEPER_OFFLINE=1 wins: it blocks the mirror too.

Checksums: a file with a pinned sha256 must match it. A file with sha256=None is not pinned
(trust on first use): the first download is accepted, its sha256 is logged with a warning and
recorded in `<cache>/datasets/<name>/<file>.sha256`, and every later download must match that
record. Delete the record to accept a new upstream version.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from filelock import FileLock
from PIL import Image
from tqdm import tqdm

from trainables.cache import cache_dir, offline
from trainables.data.imageset import DatasetError

log = logging.getLogger(__name__)

LAYOUTS = ("images", "cifar10-python")


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str | None  # None: not pinned, trusted on first use (see the module docstring)

    @property
    def name(self) -> str:
        return PurePosixPath(urllib.parse.urlsplit(self.url).path).name


@dataclass(frozen=True)
class RemoteDataset:
    name: str
    files: tuple[RemoteFile, ...]
    layout: str = "images"  # or "cifar10-python"
    root: str = ""  # subfolder of the extracted tree that holds the class folders
    homepage: str = ""
    extract_into: str = ""  # a folder to extract into: names the class of archives without class folders
    test_root: str = ""  # subfolder of the extracted tree with the test split's class folders; "": none


REGISTRY: dict[str, RemoteDataset] = {}


def register(dataset: RemoteDataset) -> RemoteDataset:
    """Add or replace a dataset under `dataset.name`."""
    if not dataset.name or any(c in dataset.name for c in ":/\\") or dataset.name.startswith("."):
        raise DatasetError(f"bad dataset name {dataset.name!r}: it is a folder name and a --data prefix")
    if dataset.layout not in LAYOUTS:
        raise DatasetError(f"{dataset.name}: unknown layout {dataset.layout!r}; layouts: {', '.join(LAYOUTS)}")
    REGISTRY[dataset.name] = dataset
    return dataset


_CATS = "https://github.com/fferlito/Cat-faces-dataset/raw/master/dataset-part{}.tar.gz"
register(RemoteDataset(  # ~7000 64x64 cat faces; upstream publishes no checksums
    "cat-faces-64", tuple(RemoteFile(_CATS.format(i), None) for i in (1, 2, 3)),
    homepage="https://github.com/fferlito/Cat-faces-dataset", extract_into="cat",
))
register(RemoteDataset(
    "afhq",
    (RemoteFile("https://www.dropbox.com/s/t9l9o3vsx2jai3z/afhq.zip?dl=1",
                "7f63dcc14ef58c0e849b59091287e1844da97016073aac20403ae6c6132b950f"),),
    root="afhq/train", test_root="afhq/val", homepage="https://github.com/clovaai/stargan-v2",
))
register(RemoteDataset(
    "cifar10",
    (RemoteFile("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
    layout="cifar10-python", test_root="test", homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
))

ALIASES = {"afhq-cat": ("afhq", "cat"), "afhq-dog": ("afhq", "dog")}


def resolve_name(source: str) -> tuple[RemoteDataset, str | None] | None:
    """(dataset, class or None) for "name", "name:class" or an alias; None when not a known name.
    Training split only; `parse_named` reads every spelling."""
    if not isinstance(source, str):
        return None
    if source in ALIASES:
        name, class_name = ALIASES[source]
        return REGISTRY[name], class_name
    name, _, class_name = source.partition(":")
    return (REGISTRY[name], class_name or None) if name in REGISTRY else None


TRAIN, TEST = "train", "test"
SPLIT_SUFFIX = "/" + TEST  # "cifar10/test"
MIRROR_ENV = "SWEEPER_DATASETS"


class Named(NamedTuple):
    """A parsed known name: which dataset, which split, which classes (the text after ":", or None)."""
    dataset: RemoteDataset
    split: str = TRAIN
    classes: str | None = None
    alias: str | None = None  # "afhq-cat": looked up first in a mirror


def parse_named(source: str) -> Named | None:
    """"name[/test][:classes]" or "alias[/test]" (module docstring); None when not a known name."""
    if not isinstance(source, str):
        return None
    spelled, sep, classes = source.partition(":")
    split = TEST if spelled.endswith(SPLIT_SUFFIX) else TRAIN
    name = spelled[: -len(SPLIT_SUFFIX)] if split == TEST else spelled
    if name in ALIASES and not sep:
        dataset, class_name = ALIASES[name]
        return Named(REGISTRY[dataset], split, class_name, alias=name)
    if name in REGISTRY:
        return Named(REGISTRY[name], split, classes or None)
    return None


def spelling(named: Named) -> str:
    """The name as a user writes it, for messages."""
    base = named.alias or named.dataset.name
    suffix = SPLIT_SUFFIX if named.split == TEST else ""
    return f"{base}{suffix}" + (f":{named.classes}" if named.classes and not named.alias else "")


def mirror_root() -> Path | None:
    """The SWEEPER_DATASETS folder, or None when unset or empty."""
    value = os.environ.get(MIRROR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def local_folder(named: Named) -> Path:
    """The folder of `named`'s split: from the mirror when SWEEPER_DATASETS is set, else from the
    cache, downloading first if needed."""
    root = mirror_root()
    if root is not None:
        return _mirror_split(named, root)
    _check_split(named)
    folder = fetch(named.dataset)
    return folder if named.split == TRAIN else _home(named.dataset)[1] / named.dataset.test_root


def present_folder(named: Named) -> Path | None:
    """`local_folder` when that needs no download (a mirror, or already in the cache), else None."""
    root = mirror_root()
    if root is not None:
        return _mirror_split(named, root)
    if not _home(named.dataset)[1].is_dir():
        return None
    return local_folder(named)


def check_available(named: Named) -> None:
    """Raise DatasetError unless `local_folder(named)` can succeed without decoding anything: the mirror
    has it, or the split exists and SWEEPER_OFFLINE does not forbid a download it needs."""
    root = mirror_root()
    if root is not None:
        _mirror_split(named, root)
        return
    _check_split(named)
    check_fetchable(named.dataset)


def _check_split(named: Named) -> None:
    if named.split == TEST and not named.dataset.test_root:
        raise DatasetError(f"{spelling(named)}: {named.dataset.name} publishes no test split")


def _mirror_split(named: Named, root: Path) -> Path:
    folder = _mirror_folder(named, root)
    if named.split == TRAIN:
        return folder / TRAIN if (folder / TRAIN).is_dir() else folder
    for split in (TEST, "val"):
        if (folder / split).is_dir():
            return folder / split
    raise DatasetError(f"{spelling(named)}: the mirror folder {folder} has no test/ (or val/) folder "
                       f"({MIRROR_ENV}={root})")


def _mirror_folder(named: Named, root: Path) -> Path:
    """root/<name> or the first root/<name>-*, trying the alias's name before its dataset's."""
    if not root.is_dir():
        raise DatasetError(f"{MIRROR_ENV}={root}: no such folder (the mirror of known dataset names)")
    names = [n for n in (named.alias, named.dataset.name) if n]
    entries = sorted(p.name for p in root.iterdir() if p.is_dir())
    for name in names:
        found = [e for e in entries if e == name] or [e for e in entries if e.startswith(name + "-")]
        if found:
            return root / found[0]
    looked = " or ".join(f"{n}/, {n}-*/" for n in names)
    raise DatasetError(f"{spelling(named)}: not in the dataset mirror {MIRROR_ENV}={root} (looked for {looked}); "
                       f"add it there, or unset {MIRROR_ENV} to download it")


def fetch(dataset: RemoteDataset) -> Path:
    """The local class folder of `dataset`, downloading and extracting it first if needed.

    For "cifar10-python" this is the train split; the test split is written beside it
    (`<cache>/datasets/<name>/images/test`).
    """
    home, final = _home(dataset)
    result = final / ("train" if dataset.layout == "cifar10-python" else dataset.root)
    if final.is_dir():  # only ever created by an atomic rename, so it is complete
        return result
    check_fetchable(dataset)
    home.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home.parent / f"{dataset.name}.lock")):
        if final.is_dir():  # another process fetched it while we waited for the lock
            return result
        home.mkdir(exist_ok=True)
        for stale in home.glob(".tmp-*"):  # left by a killed process; the lock says nobody uses it
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=home))
        try:
            _build(dataset, home, work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if not any(home.iterdir()):
                home.rmdir()
    return result


def check_fetchable(dataset: RemoteDataset) -> None:
    """Raise DatasetError when `dataset` is not in the cache and SWEEPER_OFFLINE=1 forbids the download."""
    home, final = _home(dataset)
    if offline() and not final.is_dir():
        urls = " ".join(f.url for f in dataset.files)
        raise DatasetError(
            f"{dataset.name} is not in the cache ({home}) and SWEEPER_OFFLINE=1: unset SWEEPER_OFFLINE to "
            f"download it from {urls} (or from a mirror set in SWEEPER_DATA_MIRROR), or download it "
            "yourself and pass the archive path as --data, or set SWEEPER_DATASETS to a local mirror that holds it"
        )


def _home(dataset: RemoteDataset) -> tuple[Path, Path]:
    """(the dataset's cache folder, its complete extracted tree inside)."""
    home = cache_dir() / "datasets" / dataset.name
    return home, home / ("images" if dataset.layout == "cifar10-python" else "extracted")


def _build(dataset: RemoteDataset, home: Path, work: Path, final: Path) -> None:
    extracted, digests = work / "extracted", {}
    extracted.mkdir()
    for file in dataset.files:
        path, digests[file.name] = _download(dataset, file, home, work)
        (extracted / dataset.extract_into).mkdir(parents=True, exist_ok=True)
        _extract(dataset.name, path, extracted / dataset.extract_into)
        path.unlink(missing_ok=True)  # the extracted copy is all we use; keep the disk for it
    if dataset.layout == "cifar10-python":
        _cifar_to_pngs(dataset.name, extracted, work / "images")
        extracted = work / "images"
    elif not (extracted / dataset.root).is_dir():
        raise DatasetError(f"{dataset.name}: the downloaded archives hold no folder {dataset.root!r}")
    os.replace(extracted, final)
    for file in dataset.files:  # recorded only now, so a failed attempt pins nothing
        record = home / f"{file.name}.sha256"
        if file.sha256 is None and not record.exists():
            record.write_text(digests[file.name] + "\n")
            log.warning("%s: %s has no pinned sha256; trusting this first download, sha256 %s, recorded in %s",
                        dataset.name, file.name, digests[file.name], record)


def _download(dataset: RemoteDataset, file: RemoteFile, home: Path, work: Path) -> tuple[Path, str]:
    mirror = os.environ.get("SWEEPER_DATA_MIRROR", "").strip()
    url = f"{mirror.rstrip('/')}/{file.name}" if mirror else file.url
    path, digest = work / file.name, hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=file.name,
                      file=sys.stderr, disable=None, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DatasetError(f"{dataset.name}: download failed, HTTP {e.code} {e.reason} for {url}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DatasetError(f"{dataset.name}: download failed for {url}: {reason}") from None
    got, record = digest.hexdigest(), home / f"{file.name}.sha256"
    expected = file.sha256 or (record.read_text().strip() if record.exists() else None)
    if expected is not None and got != expected.lower():
        where = "" if file.sha256 else f" (recorded at first download in {record})"
        raise DatasetError(f"{dataset.name}: checksum mismatch for {file.name}: expected {expected}, got {got}{where}")
    return path, got


def _extract(name: str, archive: Path, into: Path) -> None:
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(into)  # zipfile already drops absolute paths and ".." parts
        elif archive.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            if not hasattr(tarfile, "data_filter"):
                raise DatasetError("safe tar extraction needs Python >= 3.10.12 or >= 3.11.4")
            with tarfile.open(archive) as t:
                t.extractall(into, filter="data")  # refuses "..", absolute paths and links leaving `into`
        else:  # not an archive: used as it is
            shutil.move(archive, into / archive.name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise DatasetError(f"{name}: cannot extract {archive.name}: {e}") from None


# Hand-written rather than torchvision.datasets.CIFAR10: torchvision insists on its own hard-coded
# md5 list of the batch files and on its own download, so neither a mirror nor a test archive would
# pass. We verify the archive's sha256 ourselves and only need the pickles read.
def _cifar_to_pngs(name: str, extracted: Path, out: Path) -> None:
    metas = sorted(extracted.rglob("batches.meta"))
    if not metas:
        raise DatasetError(f"{name}: no batches.meta in the downloaded archive")
    batches, bad = metas[0].parent, (KeyError, IndexError, TypeError, ValueError, AttributeError)
    try:
        classes = [c.decode() for c in _unpickle(name, metas[0])[b"label_names"]]
    except bad as e:
        raise DatasetError(f"{name}: batches.meta is not CIFAR-10 metadata: {e!r}") from None
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        for c in classes:
            (out / split / c).mkdir(parents=True)
        index = 0
        for file in files:
            batch = _unpickle(name, batches / file)
            try:
                pixels = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                labels = [classes[label] for label in batch[b"labels"]]
            except bad as e:
                raise DatasetError(f"{name}: {file} is not a CIFAR-10 python batch: {e!r}") from None
            for image, label in zip(pixels, labels):
                Image.fromarray(image).save(out / split / label / f"{index:05d}.png")
                index += 1


class _ArraysOnly(pickle.Unpickler):
    # A pickle can run any code; the batches need nothing beyond numpy arrays (and _codecs.encode,
    # which Python 3 uses for bytes in protocol-2 pickles), so refuse every other global.
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


def _unpickle(name: str, path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="bytes").load()  # the batches were pickled by Python 2
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise DatasetError(f"{name}: cannot read CIFAR batch {path.name}: {e}") from None
