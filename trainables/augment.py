"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

`diff_augment(x, policy)` augments a float [B, C, H, W] batch in [-1, 1] with the comma-separated
`policy` ("color", "translation", "cutout"); the training step applies it to both the real and the
fake batch before D, so gradients must flow through it to G.

Hand-written because none of the project's libraries provides differentiable batch augmentation
with per-sample parameters: torchvision's transforms draw one set of parameters per call (the whole
batch shifts alike) and torch-fidelity only computes metrics. The maths and the order of the random
draws follow the official mit-han-lab/data-efficient-gans DiffAugment_pytorch.py, so published
policies mean the same here. Translation and cutout are written as gathers and elementwise masks
instead of the official advanced indexing: same result, but every shape is static and nothing
reads a tensor value on the host, so the training step can later be captured as a CUDA graph. All
randomness comes from torch's global RNG on x's device, so a seeded run repeats and an exact resume
(which restores that RNG) continues the same stream.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """Apply the `policy` augmentations, each with independent parameters per sample."""
    names = parse_policy(policy)
    if not names:
        return x
    for name in names:
        for fn in AUGMENT_FNS[name]:
            x = fn(x)
    return x.contiguous()


def parse_policy(policy: str) -> list[str]:
    """The policy's names in order; ValueError naming the first unknown one."""
    # Empty parts are skipped, as GANConfig's validation does, so every config it accepts works here.
    names = [name for name in policy.split(",") if name]
    for name in names:
        if name not in AUGMENT_FNS:
            raise ValueError(f"unknown DiffAugment policy {name!r} (choose from {', '.join(AUGMENT_FNS)})")
    return names


def _rand(x: torch.Tensor) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)


def rand_brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (_rand(x) - 0.5)


def rand_saturation(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x) * 2) + mean


def rand_contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand(x) + 0.5) + mean


def rand_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size in each axis, filling with zeros."""
    B, C, H, W = x.shape
    shift_h, shift_w = int(H * ratio + 0.5), int(W * ratio + 0.5)
    dh = torch.randint(-shift_h, shift_h + 1, size=[B, 1, 1], device=x.device)
    dw = torch.randint(-shift_w, shift_w + 1, size=[B, 1, 1], device=x.device)
    # As in the official code, output[i, j] = input[i + dh, j + dw]; indices that fall outside are
    # clamped onto a one-pixel zero border, which keeps the gather's shape fixed.
    rows = (torch.arange(H, device=x.device).view(1, H, 1) + dh + 1).clamp(0, H + 1)
    cols = (torch.arange(W, device=x.device).view(1, 1, W) + dw + 1).clamp(0, W + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    x = padded.gather(2, rows.unsqueeze(1).expand(B, C, H, W + 2))
    return x.gather(3, cols.unsqueeze(1).expand(B, C, H, W))


def rand_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of `ratio` times the image size per image; it may be clipped at the border."""
    B, _, H, W = x.shape
    size_h, size_w = int(H * ratio + 0.5), int(W * ratio + 0.5)
    # The official centre range: an even-sized square may start up to half its size outside.
    centre_h = torch.randint(0, H + (1 - size_h % 2), size=[B, 1, 1], device=x.device)
    centre_w = torch.randint(0, W + (1 - size_w % 2), size=[B, 1, 1], device=x.device)
    top, left = centre_h - size_h // 2, centre_w - size_w // 2
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)
    inside = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    # A multiplicative mask (not in-place zeroing) keeps x's autograd graph intact.
    return x * (~inside).to(x.dtype).unsqueeze(1)


AUGMENT_FNS = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "translation": (rand_translation,),
    "cutout": (rand_cutout,),
}
