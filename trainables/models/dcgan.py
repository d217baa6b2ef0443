"""DCGAN (Radford et al. 2015): strided (transposed) convolutions, one block per factor of two.

The block count follows the resolution: log2(resolution) - 2 blocks between 4x4 and the image.
"""
import math

import torch
from torch import nn

from trainables.models.norms import norm_layer


def _num_blocks(resolution: int) -> int:
    return int(math.log2(resolution)) - 2


class DCGANGenerator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.z_dim = cfg.z_dim
        n = _num_blocks(cfg.resolution)
        widths = [cfg.g_width * 2 ** i for i in reversed(range(n))]  # e.g. 256, 128, 64
        layers = [nn.ConvTranspose2d(cfg.z_dim, widths[0], 4, 1, 0, bias=False),
                  norm_layer(cfg.g_norm, widths[0]), nn.ReLU(inplace=True)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                       norm_layer(cfg.g_norm, c_out), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        n = _num_blocks(cfg.resolution)
        widths = [cfg.d_width * 2 ** i for i in range(n)]  # e.g. 64, 128, 256
        # No normalisation on the first block (DCGAN): it would wash out the input colours.
        layers = [nn.Conv2d(3, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False),
                       norm_layer(cfg.d_norm, c_out), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def _dcgan_init(m: nn.Module) -> None:
    # DCGAN's N(0, 0.02) weights; norm scales around 1.
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
