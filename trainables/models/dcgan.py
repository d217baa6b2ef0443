"""DCGAN (Radford et al. 2015): strided (transposed) convolutions, one block per factor of two.

Blocks: n = log2(resolution) - 2 in each network, a block being one (transposed) conv + norm +
activation. G: the first block projects z from 1x1 to 4x4, the next n - 1 double it, and an output
layer (ConvTranspose + Tanh, no norm) makes the last doubling to the image. D mirrors it: n blocks
of stride-2 Conv + norm + LeakyReLU take the image down to 4x4 (the first block without a norm, as
in DCGAN), then an output Conv maps 4x4 to one logit. So 128 px has 5 blocks each and 512 px 7,
which is how seed 000 describes its WGAN-GP generator (ConvTranspose+BatchNorm+ReLU) and critic
(Conv+InstanceNorm+LeakyReLU); the output layers are not counted as blocks.

Widths double per block away from the image and stop at MAX_WIDTH, so 512 px stays trainable.
"""
import math

import torch
from torch import nn

from trainables.models.norms import dropout, norm_layer, spectral

MAX_WIDTH = 512  # like stylegan2's channel_max


def num_blocks(resolution: int) -> int:
    return int(math.log2(resolution)) - 2


def widths_from_image(base: int, n: int) -> list[int]:
    """Channels of the n blocks, the block at the image first."""
    return [min(base * 2 ** i, MAX_WIDTH) for i in range(n)]


class DCGANGenerator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.z_dim = cfg.z_dim
        widths = widths_from_image(cfg.g_width, num_blocks(cfg.resolution))[::-1]  # e.g. 512, 256, 128, 64
        layers = _g_block(cfg.z_dim, widths[0], cfg.g_norm, stride=1, padding=0)
        for c_in, c_out in zip(widths, widths[1:]):
            layers += _g_block(c_in, c_out, cfg.g_norm, stride=2, padding=1)
        layers += [_dcgan_init(nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1)), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(_norm_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        widths = widths_from_image(cfg.d_width, num_blocks(cfg.resolution))  # e.g. 64, 128, 256, 512
        sn = cfg.d_norm == "spectral"
        # No normalisation on the first block (DCGAN): it would wash out the input colours.
        layers = _d_block(3, widths[0], "none", sn, cfg.d_dropout)
        for c_in, c_out in zip(widths, widths[1:]):
            layers += _d_block(c_in, c_out, cfg.d_norm, sn, cfg.d_dropout)
        layers += [spectral(_dcgan_init(nn.Conv2d(widths[-1], 1, 4, 1, 0)), sn)]
        self.net = nn.Sequential(*layers)
        self.apply(_norm_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def _g_block(c_in: int, c_out: int, norm: str, stride: int, padding: int) -> list[nn.Module]:
    conv = nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=_needs_bias(norm))
    return [_dcgan_init(conv), norm_layer(norm, c_out), nn.ReLU(inplace=True)]


def _d_block(c_in: int, c_out: int, norm: str, sn: bool, p: float) -> list[nn.Module]:
    conv = spectral(_dcgan_init(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=_needs_bias(norm))), sn)
    return [conv, norm_layer(norm, c_out), nn.LeakyReLU(0.2, inplace=True), dropout(p)]


def _needs_bias(norm: str) -> bool:
    # A norm that subtracts the mean cancels a conv bias; without one the bias is needed.
    return norm in ("none", "spectral")


def _dcgan_init(conv: nn.Module) -> nn.Module:
    # DCGAN's N(0, 0.02) weights, applied before any spectral-norm wrapping (see norms.spectral).
    nn.init.normal_(conv.weight, 0.0, 0.02)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _norm_init(m: nn.Module) -> None:
    # DCGAN's norm scales around 1.
    if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
