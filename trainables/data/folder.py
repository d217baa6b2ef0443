"""Load a folder of photos into an ImageSet: decode, centre-crop to a square, resize with LANCZOS."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from trainables.data.imageset import DatasetError, ImageSet, make_imageset

log = logging.getLogger(__name__)

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})


class _Unreadable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def load_folder(path: str | os.PathLike, resolution: int, class_name: str | None = None) -> ImageSet:
    """Every image under `path`, labelled by its first subfolder level.

    The class of a file is the name of the subfolder of `path` that holds it at any depth; files
    directly in `path` get the name of `path` itself. Classes are sorted by name and `labels` index
    into them. Extensions .jpg .jpeg .png .webp .bmp .gif (first frame), any case; other files and
    hidden files/folders (a leading ".") are ignored. The order is sorted, so it is deterministic.

    `class_name` loads only that class; `classes` still lists every class so labels keep their
    meaning across subsets.

    Unreadable files are skipped and counted in `skipped` by reason:
      "empty"        the file has zero bytes
      "not-an-image" Pillow cannot identify the format (a text file, a header cut short)
      "truncated"    the image data ends early
      "too-large"    over Pillow's decompression-bomb limit
      "corrupt"      any other decoding error (bad chunks, bad EXIF, broken data)
      "unreadable"   the operating system refuses to read it (permissions, a dangling link)
    Raises DatasetError for a missing path, an unknown class or zero usable images.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"not a folder: {root}" if root.exists() else f"dataset folder not found: {root}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise DatasetError(f"resolution must be a positive integer, got {resolution!r}")
    files = _find_images(root)
    classes = tuple(sorted({cls for cls, _ in files}))
    if class_name is not None:
        if class_name not in classes:
            available = ", ".join(classes) or "(none)"
            raise DatasetError(f"no class {class_name!r} in {root}; classes: {available}")
        files = [(cls, f) for cls, f in files if cls == class_name]
    images, labels, skipped = _decode_all(files, classes, resolution)
    if not len(images):
        what = f"class {class_name!r} of {root}" if class_name else str(root)
        raise DatasetError(f"no usable images in {what} (skipped: {_describe(skipped)})")
    _log_skipped(root, skipped)
    return make_imageset(images, np.array(labels, dtype=np.int64), classes, skipped)


def _find_images(root: Path) -> list[tuple[str, Path]]:
    """(class name, file) for every image file under root, in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # os.walk recurses in this order
        rel = Path(dirpath).relative_to(root).parts
        cls = rel[0] if rel else root.resolve().name
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in EXTENSIONS:
                found.append((cls, Path(dirpath, name)))
    return found


def _decode_all(files, classes, resolution):
    """Decode into one preallocated NCHW array: a list of images plus a stacked copy doubles the peak."""
    images = np.empty((len(files), 3, resolution, resolution), dtype=np.uint8)
    labels, skipped = [], {}
    for cls, file in files:
        try:
            images[len(labels)] = _decode_image(file, resolution).transpose(2, 0, 1)
            labels.append(classes.index(cls))
        except _Unreadable as bad:
            skipped[bad.reason] = skipped.get(bad.reason, 0) + 1
            log.debug("skipped %s: %s", file, bad.reason)
    if len(labels) < len(files):
        images = images[: len(labels)].copy()  # free the rows reserved for skipped files
    return images, labels, skipped


def _decode_image(file: Path, resolution: int) -> np.ndarray:
    """uint8 [R, R, 3] of the file's first frame, upright, RGB, centre-cropped, LANCZOS-resized."""
    try:
        if file.stat().st_size == 0:
            raise _Unreadable("empty")
        with Image.open(file) as im:
            im.load()  # decode now, so a truncated file fails here and not half-way through a resize
            im = ImageOps.exif_transpose(im)
            return _square_rgb(im, resolution)
    except (FileNotFoundError, PermissionError):  # a dangling link, a file without read permission
        raise _Unreadable("unreadable") from None
    except UnidentifiedImageError:
        raise _Unreadable("not-an-image") from None
    except Image.DecompressionBombError:
        raise _Unreadable("too-large") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # Pillow's decoders raise all of these
        raise _Unreadable("truncated" if "truncated" in str(err).lower() else "corrupt") from None


def _square_rgb(im: Image.Image, resolution: int) -> np.ndarray:
    if im.mode != "RGB":
        im = _to_rgb(im)
    w, h = im.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    # crop() before resize(): resize(box=...) lets the filter reach pixels outside the box.
    out = im.crop(box).resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(out, dtype=np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Transparent pixels become white: the colour under alpha 0 is arbitrary, often black."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = _to_8bit(im)
    return im.convert("RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float greyscale: Pillow's own conversion clips them to white instead of scaling."""
    a = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        top = 1.0 if a.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
    return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def _describe(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"


def _log_skipped(root: Path, skipped: dict[str, int]) -> None:
    if skipped:
        log.warning("%s: skipped %d unreadable files (%s)", root, sum(skipped.values()), _describe(skipped))
