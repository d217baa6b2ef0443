"""Normalisation layers by name, so G and D can each pick theirs from the config."""
from torch import nn


def norm_layer(name: str, channels: int) -> nn.Module:
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if name == "layer":
        # GroupNorm with one group normalises over (C, H, W) per sample: layer norm for conv maps.
        return nn.GroupNorm(1, channels)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {name!r}")
