"""One training step: n_critic D updates then one G update.

Static shapes and no host synchronisation (no `.item()`, no branching on tensor values), so the
step can later be captured as a CUDA graph; Python branches only on the (static) config.
"""
import torch

from trainables.losses import LOSSES, gradient_penalty


def sample_batch(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A random batch of the device-resident uint8 dataset as floats in [-1, 1], randomly mirrored."""
    idx = torch.randint(images.shape[0], (batch_size,), device=images.device)
    x = images[idx].float().div_(127.5).sub_(1.0)
    flip = torch.rand(batch_size, 1, 1, 1, device=images.device) < 0.5
    return torch.where(flip, x.flip(3), x)


def train_step(cfg, G, D, opt_g, opt_d, images: torch.Tensor) -> torch.Tensor:
    """Returns the detached [loss_d, loss_g] of this step (still on the device)."""
    d_loss_fn, g_loss_fn = LOSSES[cfg.loss]
    device = images.device
    for _ in range(cfg.n_critic):
        real = sample_batch(images, cfg.batch_size)
        with torch.no_grad():
            fake = G(torch.randn(cfg.batch_size, cfg.z_dim, device=device))
        loss_d = d_loss_fn(D(real), D(fake))
        if cfg.loss == "wgan-gp":
            loss_d = loss_d + cfg.gp_weight * gradient_penalty(D, real, fake)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

    # D's weights are constants for G's update; skipping their gradients saves a third of the backward.
    D.requires_grad_(False)
    loss_g = g_loss_fn(D(G(torch.randn(cfg.batch_size, cfg.z_dim, device=device))))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    D.requires_grad_(True)
    return torch.stack([loss_d.detach(), loss_g.detach()])
