"""Resolve a dataset source string (the `data` key of a sweep) into an ImageSet."""

from __future__ import annotations

from pathlib import Path

from trainables.data.folder import load_folder
from trainables.data.imageset import DatasetError, ImageSet
from trainables.data.toy_faces import CLASSES as TOY_CLASSES
from trainables.data.toy_faces import toy_faces

TOY = "toy-faces"


def load_dataset(source: str, resolution: int, toy_size: int = 4096, seed: int = 0) -> ImageSet:
    """"toy-faces", "toy-faces:cat", "toy-faces:dog", a folder path, or "<folder>:<class>".

    The ":<class>" suffix is only read as a class when the whole string is not itself an existing
    path, so a folder whose name contains a colon still loads whole. `toy_size` and `seed` apply
    to toy-faces only; "toy-faces:cat" gives `toy_size` cats.
    """
    folder, class_name = _parse(source)
    if folder is None:
        return toy_faces(toy_size, resolution, seed, class_name=class_name)
    return load_folder(folder, resolution, class_name)


def check_source(source: str) -> None:
    """Raise DatasetError unless `source` names a dataset, without decoding anything.

    For validating a sweep before anything starts; a folder may still turn out to hold no usable
    images, which only load_dataset can tell.
    """
    folder, class_name = _parse(source)
    if folder is None:
        if class_name is not None and class_name not in TOY_CLASSES:
            raise DatasetError(f"toy-faces has no class {class_name!r}; classes: {', '.join(TOY_CLASSES)}")
    elif not folder.is_dir():
        raise DatasetError(f"dataset is not a folder: {folder}")
    elif class_name not in (None, folder.resolve().name) and not (folder / class_name).is_dir():
        raise DatasetError(f"no class {class_name!r} in {folder}")


def _parse(source: str) -> tuple[Path | None, str | None]:
    """(folder or None for toy-faces, class name or None for all classes)."""
    if not isinstance(source, str) or not source:
        raise DatasetError(f"dataset not found: {source!r}")
    if source == TOY:
        return None, None
    if source.startswith(TOY + ":"):
        return None, source[len(TOY) + 1 :]
    path = Path(source).expanduser()
    if path.exists():
        return path, None
    folder, sep, class_name = source.rpartition(":")
    if sep and folder and class_name and Path(folder).expanduser().exists():
        return Path(folder).expanduser(), class_name
    raise DatasetError(f"dataset not found: {source}")
