"""Normalisation, spectral norm and dropout by name, so G and D can each pick theirs from the config."""
from torch import nn
from torch.nn.utils import parametrizations


def norm_layer(name: str, channels: int) -> nn.Module:
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if name == "layer":
        # GroupNorm with one group normalises over (C, H, W) per sample: layer norm for conv maps.
        return nn.GroupNorm(1, channels)
    if name in ("none", "spectral"):
        # Spectral norm reparametrises the weights (see `spectral`); it adds no layer.
        return nn.Identity()
    raise ValueError(f"unknown normalisation {name!r}")


def spectral(module: nn.Module, enabled: bool) -> nn.Module:
    """The Conv/Linear itself, spectrally normalised when enabled. Initialise its weight first:
    the parametrisation's power iteration starts from the weight it finds, and afterwards
    `module.weight` is a computed tensor that in-place init would silently not reach."""
    return parametrizations.spectral_norm(module) if enabled else module


def dropout(p: float) -> nn.Module:
    # Identity at p == 0, so a model without dropout has no Dropout modules and draws no random numbers.
    return nn.Dropout(p) if p > 0 else nn.Identity()
