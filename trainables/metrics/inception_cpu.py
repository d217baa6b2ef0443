"""torch-fidelity's Inception-v3 ("inception-v3-compat") rearranged for speed on a CPU, with the
same features to float rounding (tests/test_inception_cpu.py compares them with torch-fidelity's own
unmodified forward). Measured by bench/fid_cpu.py; the decisions it supports:

- Batch norm folded into each convolution's weights and bias (torch's `fuse_conv_bn_eval`): one
  pass over each activation fewer, 94 times per image.
- Channels-last memory layout for the network and its input: oneDNN's convolutions run on NHWC
  without reordering every activation, and the max/avg pools vectorise over channels.
- The TF1-style bilinear resize to 299 px as two small matrix products (`tf1_resize`), the same
  weights torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x` gathers pixel by pixel.
- At most `CPU_BATCH` images per forward pass: the activations of a few dozen 299 px images stay
  closer to the caches than those of the 250 a caller may hand over at once.

Kept as they are: fp32 arithmetic (CPU bf16 autocast moved the features by 1.8e-2 relative, the
standard FID allows 1e-3) and eager mode (torch.compile of this network took ~2 min on 2 cores, in
every new process, i.e. every Ray task, to run at the speed measured here; torch.jit.freeze was slower).
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

INPUT_SIZE = 299  # torch-fidelity's FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE
CPU_BATCH = 32
# The blocks of torch-fidelity's forward up to its "2048" feature (pool3), in its order.
_BLOCKS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
           "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
           "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")


class Pool3OnCPU(nn.Module):
    """The pool3 (2048-d) features of a loaded torch-fidelity Inception in eval mode (`model`: taken
    over, its batch norms folded in place)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        folded = fold_batch_norms(model)
        self.blocks = nn.Sequential(*(getattr(folded, name) for name in _BLOCKS))
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> float32 [N, 2048]."""
        return torch.cat([self._pool3(chunk) for chunk in images.split(CPU_BATCH)])

    def _pool3(self, images: torch.Tensor) -> torch.Tensor:
        x = tf1_resize(images.float(), INPUT_SIZE)
        x = ((x - 128) / 128).contiguous(memory_format=torch.channels_last)  # torch-fidelity's normalisation
        return torch.flatten(self.blocks(x), 1)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """`model` (in eval mode) with each BasicConv2d's batch norm folded into its conv, in place."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    for block in model.modules():
        if isinstance(block, BasicConv2d) and not isinstance(block.bn, nn.Identity):
            block.conv = fuse_conv_bn_eval(block.conv, block.bn)
            block.bn = nn.Identity()
    return model


def tf1_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float [N, C, H, W] -> [N, C, size, size], bilinear as TensorFlow 1.x (align_corners=False,
    no half-pixel centres): torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x` (its exact
    "slow" method), written as rows @ images @ columns^T; F.interpolate has no such mode."""
    rows = _tf1_weights(images.shape[2], size, images.device)
    columns = _tf1_weights(images.shape[3], size, images.device)
    return rows @ images @ columns.T


@functools.lru_cache(maxsize=8)
def _tf1_weights(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """[out_size, in_size]: output pixel i reads source position i * in/out, split between its two
    neighbours (the last one clamped), as TF1's resize_bilinear computes them."""
    position = torch.arange(out_size, dtype=torch.float32) * torch.tensor(in_size / out_size, dtype=torch.float32)
    low = position.long()
    high = (low + 1).clamp_max(in_size - 1)
    frac = position - low.float()
    weights = torch.zeros(out_size, in_size, dtype=torch.float32)
    index = torch.arange(out_size)
    weights.index_put_((index, low), 1 - frac, accumulate=True)
    weights.index_put_((index, high), frac, accumulate=True)
    return weights.to(device)

