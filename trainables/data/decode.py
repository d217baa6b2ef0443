"""Decode one image file's bytes into a square uint8 array, or say why it cannot be used.

Pure functions of bytes, so they run unchanged in the decoding worker processes and on archive
members. Skip reasons (`Unreadable.reason`):
  "empty"        the file has zero bytes
  "not-an-image" Pillow cannot identify the format (a text file, a header cut short), or the
                 file's extension is not an image extension
  "truncated"    the image data ends early
  "too-large"    over Pillow's decompression-bomb limit
  "corrupt"      any other decoding error (bad chunks, bad EXIF, broken data)
  "unreadable"   the operating system refuses to read it (permissions, a dangling link)
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
REASONS = ("empty", "not-an-image", "truncated", "too-large", "corrupt", "unreadable")


class Unreadable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_outputs: dict[str, np.ndarray] = {}  # in a worker process: output files, memory-mapped once


def decode_many(items: list[tuple[int, bytes | str]], resolution: int,
                output: tuple[str, int] | None = None) -> list[tuple[int, np.ndarray | str | None]]:
    """(slot, bytes) -> (slot, image) or (slot, skip reason); a str item is a reason already.

    With `output` = (path, count), images go straight into row `slot` of that memory-mapped
    uint8 [count, 3, R, R] file and the result is (slot, None): worker processes then send back
    only a few bytes per image instead of pickling every decoded pixel through a pipe.
    """
    target = None
    if output is not None:
        path, count = output
        if path not in _outputs:
            _outputs[path] = np.memmap(path, np.uint8, "r+", shape=(count, 3, resolution, resolution))
        target = _outputs[path]
    out = []
    for slot, data in items:
        if isinstance(data, str):
            out.append((slot, data))
            continue
        try:
            image = decode(data, resolution)
        except Unreadable as bad:
            out.append((slot, bad.reason))
            continue
        if target is None:
            out.append((slot, image))
        else:
            target[slot] = image
            out.append((slot, None))
    return out


def decode(data: bytes, resolution: int) -> np.ndarray:
    """uint8 [3, R, R] of the file's first frame, upright, RGB, centre-cropped, LANCZOS-resized."""
    if not data:
        raise Unreadable("empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode now, so a truncated file fails here and not half-way through a resize
            im = ImageOps.exif_transpose(im)
            return _square_rgb(im, resolution).transpose(2, 0, 1)
    except UnidentifiedImageError:
        raise Unreadable("not-an-image") from None
    except Image.DecompressionBombError:
        raise Unreadable("too-large") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # Pillow's decoders raise all of these
        raise Unreadable("truncated" if "truncated" in str(err).lower() else "corrupt") from None


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
