"""Normalisation, spectral norm and dropout by name, so G and D can each pick theirs from the config."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from trainables.compat import SpectralNormParametrization


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
    if not enabled:
        return module
    # torch.nn.utils.parametrizations.spectral_norm's defaults: one power iteration per forward,
    # eps 1e-12, dim 1 for transposed convolutions (their output channels) and 0 otherwise.
    dim = 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
    parametrize.register_parametrization(module, "weight", FP32SpectralNorm(module.weight, 1, dim, 1e-12))
    return module


class FP32SpectralNorm(SpectralNormParametrization):
    """torch's spectral-norm parametrisation with the power iteration and σ always in fp32.

    torch's own runs `torch.mv` wherever the forward runs, so under CUDA autocast its σ is a bf16
    product: off by ~0.4% and noisy from step to step, which is the Lipschitz bound SN exists for.
    Autocast is switched off inside instead. The matrix-vector products are written as `@`
    (torch.matmul, which dispatches to the same `mv` in fp32, so values are unchanged): CPU autocast
    casts matmul but not mv, so the CPU tests can see what the guard prevents. Same buffers (`_u`,
    `_v`) and state-dict keys as torch's, so checkpoints are interchangeable.
    """

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return super().forward(weight)
        with torch.autocast(weight.device.type, enabled=False):
            weight_mat = self._reshape_weight_to_matrix(weight.float())
            if self.training:
                self._power_method(weight_mat, self.n_power_iterations)
            return weight / self.sigma(weight_mat)

    def sigma(self, weight_mat: torch.Tensor) -> torch.Tensor:
        """u^T W v with the current singular-vector estimates: the largest singular value."""
        # Cloned (as torch does) so a second forward's in-place power iteration cannot change
        # tensors the first forward's backward still needs (D(real) and D(fake) in one loss).
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        return u @ (weight_mat @ v)  # torch's vdot(u, mv(W, v)); the same in fp32 (real vectors)

    @torch.no_grad()
    def _power_method(self, weight_mat: torch.Tensor, n_power_iterations: int) -> None:
        # In place (out=), as torch does, so the buffers keep their storage.
        with torch.autocast(weight_mat.device.type, enabled=False):
            for _ in range(n_power_iterations):
                F.normalize(weight_mat @ self._v, dim=0, eps=self.eps, out=self._u)
                F.normalize(weight_mat.H @ self._u, dim=0, eps=self.eps, out=self._v)


def dropout(p: float) -> nn.Module:
    # Identity at p == 0, so a model without dropout has no Dropout modules and draws no random numbers.
    return nn.Dropout(p) if p > 0 else nn.Identity()
