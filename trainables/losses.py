"""GAN objectives as short pure functions of D's logits (lucidrains style).

`d_loss(real_logits, fake_logits)` and `g_loss(fake_logits)`; the WGAN-GP penalty needs D itself
and is added by the training step.
"""
import torch
import torch.nn.functional as F


# Non-saturating BCE (Goodfellow et al. 2014): softplus(-x) = -log sigmoid(x).
def bce_d(real, fake): return F.softplus(-real).mean() + F.softplus(fake).mean()
def bce_g(fake): return F.softplus(-fake).mean()


# Wasserstein critic (Gulrajani et al. 2017); the gradient penalty is added separately.
def wgan_d(real, fake): return fake.mean() - real.mean()
def wgan_g(fake): return -fake.mean()


LOSSES = {"bce": (bce_d, bce_g), "wgan-gp": (wgan_d, wgan_g)}


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[(||∇D(x̂)||₂ - 1)²] at random points x̂ on lines between real and fake samples."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
