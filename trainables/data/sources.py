"""Resolve a dataset source string (the `data` key of a sweep, the SRC of `sweeper data prepare`)."""

from __future__ import annotations

from pathlib import Path

from trainables.data.imageset import DatasetError
from trainables.data.listing import Listing, kind_of
from trainables.data.prepare import Prepared, prepare_files, prepare_toy
from trainables.data.toy_faces import CLASSES as TOY_CLASSES

TOY = "toy-faces"


def prepare(source: str, resolution: int, *, toy_size: int = 4096, seed: int = 0, workers: int | None = None,
            progress: bool | None = None, min_images: int = 1) -> Prepared:
    """"toy-faces[:class]", a known dataset name ("afhq-cat", "cifar10:dog", ...), or a folder,
    .zip or .tar(.gz) path, optionally followed by ":<class>".

    The ":<class>" suffix is only read as a class when the whole string is not itself an existing
    path, so a folder whose name contains a colon still loads whole. `toy_size` and `seed` apply
    to toy-faces only. Fewer than `min_images` usable images is a DatasetError, and then nothing
    is cached.
    """
    kind, where, class_name = _parse(source)
    if kind == "toy":
        return prepare_toy(toy_size, resolution, seed, class_name)
    if kind == "named":
        from trainables.data.remote import fetch

        where = fetch(where)
    return prepare_files(where, resolution, class_name, workers=workers, progress=progress, min_images=min_images)


def load_dataset(source: str, resolution: int, toy_size: int = 4096, seed: int = 0):
    return prepare(source, resolution, toy_size=toy_size, seed=seed).data


def check_source(source: str) -> None:
    """Raise DatasetError unless `source` names a dataset, without decoding or downloading anything.

    For validating a sweep before anything starts; a folder may still turn out to hold no usable
    images, which only preparing it can tell. A known dataset that is not in the cache while
    SWEEPER_OFFLINE=1 is refused here already.
    """
    kind, where, class_name = _parse(source)
    if kind == "named":
        from trainables.data.remote import check_fetchable

        check_fetchable(where)
    if kind == "toy" and class_name is not None and class_name not in TOY_CLASSES:
        raise DatasetError(f"toy-faces has no class {class_name!r}; classes: {', '.join(TOY_CLASSES)}")
    if kind == "files" and class_name is not None:
        classes = Listing(where).classes  # names only: nothing is read or decoded
        if class_name not in classes:
            raise DatasetError(f"no class {class_name!r} in {where}; classes: {', '.join(classes) or '(none)'}")


def source_classes(source: str) -> tuple[str, ...] | None:
    """The class names `source` will have once prepared, from names alone (nothing decoded or
    downloaded); None for a named remote dataset, whose classes only its download tells."""
    check_source(source)
    kind, where, class_name = _parse(source)
    if class_name is not None:
        return (class_name,)
    if kind == "toy":
        return tuple(TOY_CLASSES)
    return Listing(where).classes if kind == "files" else None


def _parse(source: str):
    """(kind, where, class): ("toy", None, c), ("named", RemoteDataset, c) or ("files", Path, c)."""
    if not isinstance(source, str) or not source:
        raise DatasetError(f"dataset not found: {source!r}")
    if source == TOY or source.startswith(TOY + ":"):
        return "toy", None, source[len(TOY) + 1:] or None
    path = Path(source).expanduser()
    if kind_of(path):
        return "files", path, None
    folder, sep, class_name = source.rpartition(":")
    if sep and folder and class_name and kind_of(Path(folder).expanduser()):
        return "files", Path(folder).expanduser(), class_name
    from trainables.data.remote import resolve_name

    named = resolve_name(source)
    if named is not None:
        return "named", named[0], named[1]
    raise DatasetError(f"dataset not found: {source} (not a folder, .zip, .tar(.gz), toy-faces or a known dataset name)")
