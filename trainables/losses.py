"""GAN objectives as one-line pure functions of D's logits (lucidrains style).

`d_loss(real_logits, fake_logits, real_target)` and `g_loss(fake_logits)`. `real_target` is 1 except
under one-sided label smoothing; the losses without a real-label target ignore it. The WGAN-GP
penalty needs D itself and is added by the training step.
"""
import torch
import torch.nn.functional as F


# Non-saturating BCE (Goodfellow et al. 2014), written with softplus(-x) = -log sigmoid(x).
def bce_d(real, fake, real_target=1.0): return (real_target * F.softplus(-real) + (1 - real_target) * F.softplus(real)).mean() + F.softplus(fake).mean()
def bce_g(fake): return F.softplus(-fake).mean()


# Wasserstein critic (Arjovsky et al. 2017; Gulrajani et al. 2017 add the gradient penalty).
def wgan_d(real, fake, real_target=1.0): return fake.mean() - real.mean()
def wgan_g(fake): return -fake.mean()


# Hinge (Lim & Ye 2017; Miyato et al. 2018 with spectral norm).
def hinge_d(real, fake, real_target=1.0): return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
def hinge_g(fake): return -fake.mean()


# Least squares (Mao et al. 2017): D regresses real to 1 and fake to 0; G pulls fake towards 1.
def lsgan_d(real, fake, real_target=1.0): return 0.5 * ((real - real_target) ** 2).mean() + 0.5 * (fake ** 2).mean()
def lsgan_g(fake): return 0.5 * ((fake - 1) ** 2).mean()


LOSSES = {"bce": (bce_d, bce_g), "wgan-gp": (wgan_d, wgan_g), "hinge": (hinge_d, hinge_g),
          "lsgan": (lsgan_d, lsgan_g)}


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[(||∇D(x̂)||₂ - 1)²] at random points x̂ on lines between real and fake samples."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
