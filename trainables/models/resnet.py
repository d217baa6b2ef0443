"""SNGAN ResNet (Miyato et al. 2018, "Spectral Normalization for GANs", appendix B; the residual
blocks of Gulrajani et al. 2017).

G: z -> Linear to 4x4, then one up-sampling residual block per factor of two
(norm-ReLU-Upsample-Conv3-norm-ReLU-Conv3, shortcut Upsample-Conv1), then norm-ReLU-Conv3-Tanh.
D: an "optimized" first block at the image (Conv3-ReLU-Conv3-AvgPool, shortcut AvgPool-Conv1), then
down-sampling residual blocks to 4x4 (ReLU-Conv3-ReLU-Conv3-AvgPool, shortcut Conv1-AvgPool), one
more block without down-sampling, ReLU, global sum pooling and a Linear to one logit. `d_norm ==
"spectral"` normalises every D weight as in SNGAN; the other norms go after each conv instead.

Block counts and widths follow dcgan.py (log2(resolution) - 2 blocks, widths doubling away from the
image up to MAX_WIDTH), so `g_width`/`d_width` mean the same for both architectures.
"""
import torch
from torch import nn

from trainables.models.dcgan import num_blocks, widths_from_image
from trainables.models.norms import dropout, norm_layer, spectral


class ResNetGenerator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.z_dim = cfg.z_dim
        widths = widths_from_image(cfg.g_width, num_blocks(cfg.resolution) + 1)[::-1]
        self.project = _xavier(nn.Linear(cfg.z_dim, 4 * 4 * widths[0]))
        self.blocks = nn.Sequential(*(GBlock(c_in, c_out, cfg.g_norm) for c_in, c_out in zip(widths, widths[1:])))
        self.out = nn.Sequential(norm_layer(cfg.g_norm, widths[-1]), nn.ReLU(),
                                 _xavier(nn.Conv2d(widths[-1], 3, 3, 1, 1)), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], -1, 4, 4)
        return self.out(self.blocks(x))


class ResNetDiscriminator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        widths = widths_from_image(cfg.d_width, num_blocks(cfg.resolution))
        sn, norm, p = cfg.d_norm == "spectral", cfg.d_norm, cfg.d_dropout
        blocks = [OptimizedDBlock(3, widths[0], sn), dropout(p)]
        for c_in, c_out in zip(widths, widths[1:]):
            blocks += [DBlock(c_in, c_out, norm, sn, downsample=True), dropout(p)]
        blocks += [DBlock(widths[-1], widths[-1], norm, sn, downsample=False), nn.ReLU()]
        self.blocks = nn.Sequential(*blocks)
        self.out = spectral(_xavier(nn.Linear(widths[-1], 1)), sn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(x).sum(dim=(2, 3))).flatten()


class GBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        self.residual = nn.Sequential(
            norm_layer(norm, c_in), nn.ReLU(), nn.Upsample(scale_factor=2),
            _xavier(nn.Conv2d(c_in, c_out, 3, 1, 1)), norm_layer(norm, c_out), nn.ReLU(),
            _xavier(nn.Conv2d(c_out, c_out, 3, 1, 1)))
        self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2), _xavier(nn.Conv2d(c_in, c_out, 1), gain=1.0))

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class DBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm: str, sn: bool, downsample: bool):
        super().__init__()
        pool = nn.AvgPool2d(2) if downsample else nn.Identity()
        self.residual = nn.Sequential(
            nn.ReLU(), spectral(_xavier(nn.Conv2d(c_in, c_out, 3, 1, 1)), sn), norm_layer(norm, c_out),
            nn.ReLU(), spectral(_xavier(nn.Conv2d(c_out, c_out, 3, 1, 1)), sn), norm_layer(norm, c_out), pool)
        learnable = downsample or c_in != c_out
        self.shortcut = (nn.Sequential(spectral(_xavier(nn.Conv2d(c_in, c_out, 1), gain=1.0), sn), pool)
                         if learnable else nn.Identity())

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class OptimizedDBlock(nn.Module):
    """D's first block: no ReLU before the first conv, so the raw image is not clipped at zero."""

    def __init__(self, c_in: int, c_out: int, sn: bool):
        super().__init__()
        self.residual = nn.Sequential(
            spectral(_xavier(nn.Conv2d(c_in, c_out, 3, 1, 1)), sn), nn.ReLU(),
            spectral(_xavier(nn.Conv2d(c_out, c_out, 3, 1, 1)), sn), nn.AvgPool2d(2))
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), spectral(_xavier(nn.Conv2d(c_in, c_out, 1), gain=1.0), sn))

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


def _xavier(layer: nn.Module, gain: float = 2 ** 0.5) -> nn.Module:
    # SNGAN's initialisation (xavier uniform, gain √2 in residual paths, 1 in shortcuts), applied
    # before spectral-norm wrapping (see norms.spectral).
    nn.init.xavier_uniform_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer

