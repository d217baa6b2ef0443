"""Resolve a dataset source string (the `data` key of a sweep, the SRC of `sweeper data prepare`).

Sources: "toy-faces", a known dataset name (trainables.data.remote: "afhq-cat", "cifar10:dog",
"cifar10/test", resolved from the SWEEPER_DATASETS mirror when set), or a folder, .zip or .tar(.gz)
path. Any of them may end in ":<class>" or ":<class>,<class>,...".

One class keeps the source's whole class list in the ImageSet (labels index into it), as it always
did. Several classes make a set of just those classes, in the source's (sorted) order, relabelled
0..k-1: the same photos as a folder holding only those class folders, so "cifar10:cat,dog" from a
full CIFAR-10 download and from a cat/dog-only mirror mean the same two-class set. It is cut from the
whole source once prepared (prepare_files reads one class or all), so the Prepared's `key` and `path`
are those of the whole source; its `data` and fingerprint are the selection's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from trainables.data.imageset import DatasetError, make_imageset
from trainables.data.listing import Listing, kind_of
from trainables.data.prepare import Prepared, prepare_files, prepare_toy
from trainables.data.toy_faces import CLASSES as TOY_CLASSES

TOY = "toy-faces"


def prepare(source: str, resolution: int, *, toy_size: int = 4096, seed: int = 0, workers: int | None = None,
            progress: bool | None = None, min_images: int = 1) -> Prepared:
    """"toy-faces[:classes]", a known dataset name ("afhq-cat", "cifar10:dog", ...), or a folder,
    .zip or .tar(.gz) path, optionally followed by ":<class>" or ":<class>,<class>".

    The ":<classes>" suffix is only read as classes when the whole string is not itself an existing
    path, so a folder whose name contains a colon still loads whole. `toy_size` and `seed` apply
    to toy-faces only. Fewer than `min_images` usable images is a DatasetError, and then nothing
    is cached (for several classes: fewer in the selection, once the whole source is cached).
    """
    kind, where, classes = _parse(source)
    one = classes[0] if classes is not None and len(classes) == 1 else None
    if kind == "toy":
        prepared = prepare_toy(toy_size, resolution, seed, one)
    else:
        if kind == "named":
            from trainables.data.remote import local_folder

            where = local_folder(where)
        prepared = prepare_files(where, resolution, one, workers=workers, progress=progress,
                                 min_images=min_images if classes is None or one else 1)
    return _selected(prepared, classes, min_images) if classes is not None and one is None else prepared


def load_dataset(source: str, resolution: int, toy_size: int = 4096, seed: int = 0):
    return prepare(source, resolution, toy_size=toy_size, seed=seed).data


def check_source(source: str) -> None:
    """Raise DatasetError unless `source` names a dataset, without decoding or downloading anything.

    For validating a sweep before anything starts; a folder may still turn out to hold no usable
    images, which only preparing it can tell. A known dataset that is not in the cache while
    SWEEPER_OFFLINE=1 is refused here already, as is one missing from the SWEEPER_DATASETS mirror.
    """
    _checked_classes(source, always_list=False)


def source_classes(source: str) -> tuple[str, ...] | None:
    """The class names `source` will have once prepared, from names alone (nothing decoded or
    downloaded); None for a named dataset that is neither in the mirror nor in the cache, whose
    classes only its download tells."""
    kind, _, classes = _parse(source)
    listed = _checked_classes(source, always_list=True)
    if classes is not None:
        return classes
    if kind == "toy":
        return tuple(TOY_CLASSES)
    return listed


def _checked_classes(source: str, always_list: bool) -> tuple[str, ...] | None:
    """Check `source` (see check_source); return the classes its folder lists (None: not local, or
    not listed). Lists only when classes are named or `always_list`: a large .tar.gz lists slowly."""
    kind, where, classes = _parse(source)
    if kind == "toy":
        available = tuple(TOY_CLASSES)
        where = TOY
    else:
        if kind == "named":
            from trainables.data.remote import check_available, present_folder

            check_available(where)
            where = present_folder(where)
        listed = where is not None and (classes is not None or always_list)
        available = Listing(where).classes if listed else None  # names only: nothing decoded
    if available is not None:
        for class_name in classes or ():
            if class_name not in available:
                raise DatasetError(_no_class(class_name, where, available))
    return available


def _selected(prepared: Prepared, classes: tuple[str, ...], min_images: int) -> Prepared:
    """`prepared` cut down to `classes` (module docstring); unchanged when they are all it has."""
    data = prepared.data
    for class_name in classes:
        if class_name not in data.classes:
            raise DatasetError(_no_class(class_name, prepared.source, data.classes))
    if set(classes) == set(data.classes):
        return prepared
    kept = tuple(c for c in data.classes if c in classes)
    keep = np.isin(np.array(data.classes)[data.labels], kept)
    new_label = np.array([kept.index(c) if c in kept else -1 for c in data.classes], dtype=np.int64)
    source = f"{prepared.source}:{','.join(kept)}"
    if keep.sum() < min_images:
        raise DatasetError(f"{source}: {int(keep.sum())} usable images, at least {min_images} needed")
    subset = make_imageset(data.images[keep], new_label[data.labels[keep]], kept, data.skipped)
    return dataclasses.replace(prepared, data=subset, source=source)


def _no_class(class_name: str, where, classes) -> str:
    return f"no class {class_name!r} in {where}; classes: {', '.join(classes) or '(none)'}"


def _parse(source: str):
    """(kind, where, classes): ("toy", None, c), ("named", remote.Named, c) or ("files", Path, c),
    with c a tuple of class names or None."""
    if not isinstance(source, str) or not source:
        raise DatasetError(f"dataset not found: {source!r}")
    if source == TOY or source.startswith(TOY + ":"):
        return "toy", None, _class_list(source, source[len(TOY) + 1:])
    path = Path(source).expanduser()
    if kind_of(path):
        return "files", path, None
    folder, sep, class_spec = source.rpartition(":")
    if sep and folder and class_spec and kind_of(Path(folder).expanduser()):
        return "files", Path(folder).expanduser(), _class_list(source, class_spec)
    from trainables.data.remote import parse_named

    named = parse_named(source)
    if named is not None:
        return "named", named, _class_list(source, named.classes or "")
    raise DatasetError(f"dataset not found: {source} (not a folder, .zip, .tar(.gz), toy-faces or a known dataset name)")


def _class_list(source: str, spec: str) -> tuple[str, ...] | None:
    """"cat" -> ("cat",), "dog,cat" -> ("cat", "dog"), "" -> None."""
    if not spec:
        return None
    names = [n.strip() for n in spec.split(",")]
    if not all(names):
        raise DatasetError(f"{source}: empty class name in {spec!r}")
    return tuple(sorted(set(names)))
