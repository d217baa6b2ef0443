"""toy-faces: procedural cat and dog faces drawn with Pillow, so a sweep runs offline with no data.

Each face is drawn in "face units" (the canvas is the square [-0.5, 0.5]^2, y pointing down) and
mapped to pixels by a per-image pose (rotation, scale, translation). Shapes are polygons, so
rotated ellipses come for free. The canvas is larger than the output and downsampled with LANCZOS,
which antialiases the hard polygon edges the way a camera's optics would.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from trainables.data.imageset import DatasetError, ImageSet, make_imageset

CLASSES = ("cat", "dog")
_CAT = 0  # even indices; odd ones are dogs

_CAT_FUR = [(215, 125, 55), (236, 206, 160), (125, 125, 130), (72, 72, 78), (32, 30, 30),
            (238, 236, 230), (135, 104, 72), (172, 170, 164), (190, 150, 105)]
_DOG_FUR = [(216, 166, 86), (132, 82, 42), (80, 52, 32), (36, 32, 30), (236, 230, 220),
            (192, 142, 92), (142, 140, 138), (230, 212, 172), (172, 82, 42), (100, 96, 94)]
_CAT_IRIS = [(118, 176, 64), (212, 192, 62), (204, 142, 42), (92, 152, 212), (160, 196, 90)]
_DOG_IRIS = [(72, 42, 22), (110, 70, 32), (150, 96, 40), (54, 34, 20), (90, 56, 28), (110, 150, 200)]
_WHITE = (240, 238, 232)
_PINK = (226, 150, 150)
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 32, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 32, endpoint=False))], axis=1)
_T = np.linspace(-1, 1, 13)
_LENS = np.concatenate([np.stack([_T, _T**2 - 1], 1), np.stack([-_T, 1 - _T**2], 1)])  # almond eye


def toy_faces(n: int, resolution: int, seed: int = 0, class_name: str | None = None) -> ImageSet:
    """`n` faces at `resolution` px: even indices cats (label 0), odd indices dogs (label 1).

    Image i depends only on (seed, i, resolution), never on n, so a larger set extends a smaller
    one. `class_name` ("cat" or "dog") gives n faces of that class: the images at indices of that
    parity in the full set; `classes` stays ("cat", "dog") so labels keep their meaning.
    """
    _check_args(n, resolution, class_name)
    if class_name is None:
        indices = range(n)
    else:
        indices = range(CLASSES.index(class_name), 2 * n, 2)
    canvas = 128 if resolution <= 64 else 2 * resolution
    images = np.empty((n, 3, resolution, resolution), dtype=np.uint8)
    for row, index in enumerate(indices):
        images[row] = _face(seed, index, canvas, resolution).transpose(2, 0, 1)
    labels = np.array([i % 2 for i in indices], dtype=np.int64)
    return make_imageset(images, labels, CLASSES)


def _check_args(n: int, resolution: int, class_name: str | None) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DatasetError(f"toy-faces size must be a positive integer, got {n!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise DatasetError(f"toy-faces resolution must be an integer >= 8, got {resolution!r}")
    if class_name is not None and class_name not in CLASSES:
        raise DatasetError(f"toy-faces has no class {class_name!r}; classes: {', '.join(CLASSES)}")


def _face(seed: int, index: int, canvas: int, resolution: int) -> np.ndarray:
    """One face as uint8 [R, R, 3]; the RNG is seeded by (seed, index) alone."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, canvas)
    pen = _Pen(rng, canvas)
    if index % 2 == _CAT:
        _draw_cat(img, pen, rng)
    else:
        _draw_dog(img, pen, rng)
    out = np.asarray(img.resize((resolution, resolution), Image.LANCZOS), dtype=np.float32)
    # Sensor-like grain, added after downsampling so it survives at every resolution.
    out += rng.normal(0.0, rng.uniform(0.0, 4.0), out.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


class _Pen:
    """Maps face units to canvas pixels through this image's pose."""

    def __init__(self, rng: np.random.Generator, canvas: int):
        angle = math.radians(rng.uniform(-12, 12))
        scale = canvas * rng.uniform(0.92, 1.12)
        c, s = math.cos(angle) * scale, math.sin(angle) * scale
        self.matrix = np.array([[c, -s], [s, c]])
        self.offset = canvas * (0.5 + rng.uniform(-0.05, 0.05, 2))
        self.px = scale  # pixels per face unit, for line widths

    def pts(self, xy) -> list[float]:
        (a, b), (c, d) = self.matrix.tolist()
        ox, oy = self.offset.tolist()
        return [v for x, y in xy for v in (a * x + b * y + ox, c * x + d * y + oy)]

    def ellipse(self, draw, cx, cy, rx, ry, fill, angle=0.0):
        self.blob(draw, _CIRCLE, cx, cy, rx, ry, fill, angle)

    def blob(self, draw, unit, cx, cy, rx, ry, fill, angle=0.0):
        """`unit` (a shape around 0 of radius ~1) stretched, turned and placed at (cx, cy)."""
        # One 2x2 map (pose . rotation . radii) per shape keeps this cheap: a face draws ~30.
        c, s = math.cos(angle), math.sin(angle)
        shape = self.matrix @ np.array([[c * rx, -s * ry], [s * rx, c * ry]])
        centre = self.matrix @ (cx, cy) + self.offset
        draw.polygon((unit @ shape.T + centre).ravel().tolist(), fill=fill)

    def poly(self, draw, xy, fill):
        draw.polygon(self.pts(xy), fill=fill)

    def line(self, draw, xy, fill, width):
        draw.line(self.pts(xy), fill=fill, width=max(1, round(width * self.px)), joint="curve")


def _background(rng: np.random.Generator, canvas: int) -> Image.Image:
    """Solid, gradient or blotchy: a k x k grid of colours upsampled smoothly to the canvas."""
    k = int(rng.choice([1, 2, 2, 3, 5, 12]))
    base = rng.uniform(30, 225) + rng.normal(0, 22, 3)  # photo backdrops are mostly muted
    spread = rng.uniform(8, 45) if k < 5 else rng.uniform(6, 25)
    grid = np.clip(base + rng.normal(0, spread, (k, k, 3)), 0, 255).astype(np.uint8)
    if k == 1:
        return Image.new("RGB", (canvas, canvas), tuple(int(v) for v in grid[0, 0]))
    return Image.fromarray(grid).resize((canvas, canvas), Image.BICUBIC)


def _jitter(rng: np.random.Generator, colour, amount: float = 6.0) -> tuple[int, int, int]:
    """Mostly a brightness change: per-channel noise on dark fur would tint it green or purple."""
    gain, noise = rng.uniform(0.85, 1.12), rng.normal(0, amount, 3)
    return tuple(min(255, max(0, int(v * gain + e))) for v, e in zip(colour, noise))


def _shade(colour, factor: float) -> tuple[int, int, int]:
    """Darker below 1, towards white above 1."""
    if factor <= 1:
        return tuple(int(v * factor) for v in colour)
    return tuple(min(255, int(v + (255 - v) * (factor - 1))) for v in colour)


def _pick(rng: np.random.Generator, palette):
    return palette[int(rng.integers(len(palette)))]


def _paste_fur(img, pen, rng, base, silhouette, marks) -> None:
    """Fill the head's silhouette with fur; `marks(draw)` paints the pattern, clipped to it."""
    size = img.size
    fur = Image.new("RGB", size, base)
    marks(ImageDraw.Draw(fur))
    mask = Image.new("L", size, 0)
    silhouette(ImageDraw.Draw(mask))
    img.paste(fur, (0, 0), mask)


def _draw_cat(img, pen, rng) -> None:
    base = _jitter(rng, _pick(rng, _CAT_FUR))
    second = _jitter(rng, _pick(rng, _CAT_FUR + [_WHITE, _WHITE]))
    hw, hh = rng.uniform(0.33, 0.39), rng.uniform(0.28, 0.33)
    ear_h, ear_w = rng.uniform(0.40, 0.49), rng.uniform(0.11, 0.15)
    ear = np.array([[0.34, -0.04], [0.30 - 2 * ear_w, -0.22], [rng.uniform(0.24, 0.31), -ear_h]])
    ears = [ear * (s, 1) for s in (-1, 1)]

    def silhouette(d):
        pen.ellipse(d, 0, 0.03, hw, hh, 255)
        pen.ellipse(d, 0, 0.10, hw * 1.06, hh * 0.7, 255)  # cheek ruff
        for ear in ears:
            pen.poly(d, ear, 255)

    _paste_fur(img, pen, rng, base, silhouette, lambda d: _cat_marks(d, pen, rng, base, second))
    d = ImageDraw.Draw(img)
    for ear in ears:
        inner = ear.mean(0) + (ear - ear.mean(0)) * 0.55 + (0, 0.02)
        pen.poly(d, inner, _jitter(rng, _PINK, 10))
    dx = rng.uniform(-0.03, 0.03)  # a slight turn of the head moves the features sideways
    _cat_eyes(d, pen, rng, dx)
    _cat_mouth(d, pen, rng, dx, base)


def _cat_marks(d, pen, rng, base, second) -> None:
    pattern = rng.choice(["solid", "bib", "split", "patches", "tabby", "tabby"])
    if pattern == "bib":  # tuxedo: white muzzle, chin and a stripe up the nose
        pen.ellipse(d, 0, 0.20, 0.20, 0.16, _WHITE)
        pen.poly(d, [[-0.07, 0.2], [0, -0.12], [0.07, 0.2]], _WHITE)
    elif pattern == "split":  # calico-like: one side of the face a second colour
        side = rng.choice([-1, 1])
        pen.poly(d, [[0, -0.6], [side * 0.6, -0.6], [side * 0.6, 0.6], [side * 0.02, 0.6]], second)
    elif pattern == "patches":
        for _ in range(int(rng.integers(2, 5))):
            x, y = rng.uniform(-0.35, 0.35), rng.uniform(-0.35, 0.25)
            pen.ellipse(d, x, y, *rng.uniform(0.06, 0.16, 2), second, rng.uniform(0, 3))
    if pattern == "tabby" or (pattern == "split" and rng.random() < 0.5):
        stripe = _shade(base, rng.uniform(0.45, 0.7))
        for x in (-0.06, 0.0, 0.06):  # the "M" on the forehead
            pen.line(d, [[x, -0.08], [x * 1.5, -0.28]], stripe, 0.022)
        for s in (-1, 1):
            for y in (0.0, 0.07):
                pen.line(d, [[s * 0.25, y], [s * 0.38, y - 0.02]], stripe, 0.02)
    if rng.random() < 0.5:  # pale muzzle pads
        for s in (-1, 1):
            pen.ellipse(d, s * 0.05, 0.14, 0.065, 0.05, _shade(base, 1.3))


def _cat_eyes(d, pen, rng, dx) -> None:
    iris = _jitter(rng, _pick(rng, _CAT_IRIS), 10)
    w, h = rng.uniform(0.065, 0.085), rng.uniform(0.04, 0.058)
    slit = rng.uniform(0.012, 0.035)  # pupils widen in dim light
    for s in (-1, 1):
        cx, cy = s * rng.uniform(0.12, 0.15) + dx, -0.02
        tilt = -s * 0.25  # outer corners lift
        pen.blob(d, _LENS, cx, cy, w * 1.15, h * 1.25, (25, 22, 20), tilt)
        pen.blob(d, _LENS, cx, cy, w, h, iris, tilt)
        pen.ellipse(d, cx, cy, slit, h * 0.95, (12, 10, 10))
        pen.ellipse(d, cx + 0.02, cy - 0.018, 0.012, 0.012, (250, 250, 250))


def _cat_mouth(d, pen, rng, dx, base) -> None:
    ny = rng.uniform(0.09, 0.12)
    nw = rng.uniform(0.03, 0.045)
    dark = _shade(base, 0.35) if sum(base) > 200 else (90, 80, 80)
    nose = _jitter(rng, (214, 128, 130), 12)
    pen.poly(d, [[dx - nw, ny - 0.02], [dx + nw, ny - 0.02], [dx, ny + 0.025]], nose)
    pen.line(d, [[dx, ny + 0.025], [dx, ny + 0.06]], dark, 0.012)
    for s in (-1, 1):
        pen.line(d, [[dx, ny + 0.06], [dx + s * 0.025, ny + 0.078], [dx + s * 0.05, ny + 0.07]], dark, 0.012)
    whisker = (235, 235, 230) if sum(base) < 500 else (70, 65, 60)
    spread, lengths = rng.uniform(-0.1, 0.1), rng.uniform(0.3, 0.4, 6).tolist()
    for s in (-1, 1):
        for k, angle in enumerate((spread - 0.18, spread, spread + 0.18)):
            x0, y0 = dx + s * 0.09, ny + 0.045 + 0.015 * k
            length = lengths.pop()
            x1, y1 = x0 + s * math.cos(angle) * length, y0 + math.sin(angle) * length
            pen.line(d, [(x0, y0), ((x0 + x1) / 2, (y0 + y1) / 2 - 0.015), (x1, y1)], whisker, 0.006)


def _draw_dog(img, pen, rng) -> None:
    base = _jitter(rng, _pick(rng, _DOG_FUR))
    hw, hh = rng.uniform(0.27, 0.33), rng.uniform(0.30, 0.36)
    mw, mh = rng.uniform(0.17, 0.22), rng.uniform(0.14, 0.19)
    muzzle_y = rng.uniform(0.16, 0.2)

    def silhouette(d):
        pen.ellipse(d, 0, -0.04, hw, hh, 255)
        pen.ellipse(d, 0, muzzle_y, mw, mh, 255)

    _paste_fur(img, pen, rng, base, silhouette, lambda d: _dog_marks(d, pen, rng, base, muzzle_y, mw, mh))
    d = ImageDraw.Draw(img)
    _dog_ears(d, pen, rng, base, hw)
    dx = rng.uniform(-0.03, 0.03)
    _dog_eyes(d, pen, rng, dx)
    _dog_mouth(d, pen, rng, dx, muzzle_y, mh)


def _dog_marks(d, pen, rng, base, muzzle_y, mw, mh) -> None:
    pattern = rng.choice(["solid", "blaze", "tan-points", "patches", "mask"])
    light = _WHITE if pattern == "blaze" else _shade(base, rng.uniform(1.15, 1.5))
    if pattern == "tan-points":  # black-and-tan: tan brows and muzzle
        light = _jitter(rng, (176, 112, 58))
        for s in (-1, 1):
            pen.ellipse(d, s * 0.13, -0.14, 0.04, 0.03, light)
    elif pattern == "patches":
        second = _jitter(rng, _pick(rng, _DOG_FUR + [_WHITE]))
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(-0.3, 0.3), rng.uniform(-0.35, 0.1)
            pen.ellipse(d, x, y, *rng.uniform(0.08, 0.18, 2), second, rng.uniform(0, 3))
    elif pattern == "mask":  # dark mask around the eyes and muzzle
        dark = _shade(base, 0.45)
        pen.ellipse(d, 0, -0.03, 0.26, 0.09, dark)
        light = _shade(base, 0.6)
    if pattern == "blaze":
        pen.poly(d, [[-0.03, -0.4], [0.03, -0.4], [0.06, 0.1], [-0.06, 0.1]], _WHITE)
    pen.ellipse(d, 0, muzzle_y, mw, mh, light)  # the muzzle, paler than the head


def _dog_ears(d, pen, rng, base, hw) -> None:
    colour = _shade(base, rng.uniform(0.55, 0.95))
    length, width = rng.uniform(0.2, 0.3), rng.uniform(0.08, 0.12)
    splay = rng.uniform(0.1, 0.5)  # radians outward from hanging straight down
    for s in (-1, 1):
        top = np.array([s * (hw - 0.04), -0.24])
        centre = top + np.array([s * math.sin(splay), math.cos(splay)]) * length * 0.8
        pen.ellipse(d, centre[0], centre[1], width, length, colour, -s * splay)


def _dog_eyes(d, pen, rng, dx) -> None:
    iris = _jitter(rng, _pick(rng, _DOG_IRIS), 8)
    r = rng.uniform(0.035, 0.05)
    for s in (-1, 1):
        cx, cy = s * rng.uniform(0.11, 0.14) + dx, -0.07
        pen.ellipse(d, cx, cy, r * 1.25, r * 1.15, (20, 16, 14))
        pen.ellipse(d, cx, cy, r, r, iris)
        pen.ellipse(d, cx, cy, r * 0.55, r * 0.55, (10, 8, 8))
        pen.ellipse(d, cx + r * 0.35, cy - r * 0.35, r * 0.28, r * 0.28, (250, 250, 250))


def _dog_mouth(d, pen, rng, dx, muzzle_y, mh) -> None:
    ny = muzzle_y - mh * 0.45
    nw, nh = rng.uniform(0.06, 0.085), rng.uniform(0.04, 0.055)
    dark = (24, 20, 20)
    mouth_y = ny + rng.uniform(0.1, 0.13)
    if rng.random() < 0.4:  # panting: the tongue hangs below the mouth
        pen.ellipse(d, dx, mouth_y + 0.04, 0.045, 0.055, _jitter(rng, (214, 96, 110), 10))
    pen.line(d, [[dx, ny], [dx, mouth_y]], dark, 0.014)
    for s in (-1, 1):
        lip = [[dx, mouth_y], [dx + s * 0.05, mouth_y + 0.015], [dx + s * 0.1, mouth_y - 0.01]]
        pen.line(d, lip, dark, 0.014)
    pen.ellipse(d, dx, ny, nw, nh, dark)  # the big dark nose
    pen.ellipse(d, dx - nw * 0.3, ny - nh * 0.4, nw * 0.3, nh * 0.25, (95, 90, 90))
