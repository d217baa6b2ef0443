"""The in-memory dataset every trainer consumes: uint8 NCHW images, int64 labels, a content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from trainables.errors import BadInput


class DatasetError(BadInput):
    """A dataset that cannot be used; the message is one line naming the bad file, path or value."""


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Build with `make_imageset`, which validates the arrays and computes the fingerprint.

    `eq=False` because comparing two sets element-wise is never wanted; compare `fingerprint`s.
    Prepared sets are read-only views of a memory-mapped cache file; never write into any set's
    arrays (that would make `fingerprint` stale).
    """

    images: np.ndarray  # uint8 [N, 3, R, R], C-contiguous
    labels: np.ndarray  # int64 [N], indices into `classes`
    classes: tuple[str, ...]
    fingerprint: str  # sha256 of the content, so the same photos at two paths share one cache entry
    skipped: dict[str, int] = field(default_factory=dict)  # unreadable files by reason

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def make_imageset(
    images: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...] | list[str],
    skipped: dict[str, int] | None = None,
    fingerprint: str | None = None,
) -> ImageSet:
    """Validate shapes and dtypes, make the arrays C-contiguous and fingerprint the content
    (unless `fingerprint` is given: a prepared file records it, so loading never re-hashes)."""
    classes = tuple(classes)
    images = _check_images(images)
    labels = _check_labels(labels, len(images), len(classes))
    if not all(isinstance(c, str) and c for c in classes):
        raise DatasetError(f"class names must be non-empty strings, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise DatasetError(f"class names must be unique, got {classes!r}")
    return ImageSet(
        images=images,
        labels=labels,
        classes=classes,
        fingerprint=fingerprint or content_fingerprint(images, labels, classes),
        skipped=dict(skipped or {}),
    )


def content_fingerprint(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> str:
    """sha256 hex of shape, pixels, labels and class names; never of a path or a timestamp."""
    h = hashlib.sha256()
    h.update(b"sweeper-imageset-v1\0")  # bump if the layout hashed here ever changes
    h.update(json.dumps([list(images.shape), list(classes)]).encode())
    h.update(memoryview(images).cast("B"))
    h.update(memoryview(labels.astype("<i8", copy=False)).cast("B"))
    return h.hexdigest()


IMAGE_DIGEST_BYTES = 8  # 64 bits: among 10^5 training x 10^4 test images a chance collision has odds ~10^-10


def image_digests(images: np.ndarray) -> list[str]:
    """One short content hash per image, in order: blake2b (8 bytes, 16 hex digits) of its uint8
    [3, R, R] pixels, so equal pixels have equal digests wherever the file lives or however it was
    named. The sibling of `content_fingerprint` (one hash of the whole set) for questions about
    single images, e.g. whether a test image is among a generator's training images; compare two
    lists only at the same resolution (the pixels are those decoded at it)."""
    images = np.ascontiguousarray(images)
    return [hashlib.blake2b(image, digest_size=IMAGE_DIGEST_BYTES).hexdigest() for image in images]


def train_test_split(data: ImageSet, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a deterministic, per-class stratified split, seeded by the data's fingerprint:
    the same photos always split the same way, wherever they live."""
    if not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(int(data.fingerprint[:16], 16))
    train, test = [], []
    for c in range(len(data.classes)):
        members = rng.permutation(np.flatnonzero(data.labels == c))
        n_test = int(round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _check_images(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = getattr(images, "dtype", type(images).__name__)
        raise DatasetError(f"images must be a uint8 numpy array, got {got}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise DatasetError(f"images must have shape [N, 3, R, R], got {list(images.shape)}")
    return np.ascontiguousarray(images)


def _check_labels(labels: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (n,):
        raise DatasetError(f"labels must be integers of shape [{n}], got {labels.dtype} {list(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise DatasetError(f"labels must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]")
    return np.ascontiguousarray(labels, dtype=np.int64)
