"""Known public datasets by name: downloaded once, checksum-verified and extracted into the cache.

Files land under `<cache>/datasets/<name>/`, where the cache is $SWEEPER_CACHE (default
~/.cache/sweeper). `fetch` returns a folder whose first-level subfolders are the classes.

Environment:
  SWEEPER_OFFLINE=1        never download; a dataset not already in the cache is an error.
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
    root="afhq/train", homepage="https://github.com/clovaai/stargan-v2",
))
register(RemoteDataset(
    "cifar10",
    (RemoteFile("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
    layout="cifar10-python", homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
))

ALIASES = {"afhq-cat": ("afhq", "cat"), "afhq-dog": ("afhq", "dog")}


def resolve_name(source: str) -> tuple[RemoteDataset, str | None] | None:
    """(dataset, class or None) for "name", "name:class" or an alias; None when not a known name."""
    if not isinstance(source, str):
        return None
    if source in ALIASES:
        name, class_name = ALIASES[source]
        return REGISTRY[name], class_name
    name, _, class_name = source.partition(":")
    return (REGISTRY[name], class_name or None) if name in REGISTRY else None


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
            "yourself and pass the archive path as --data"
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
