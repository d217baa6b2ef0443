"""One training step: n_critic D updates then one G update.

Static shapes and no host synchronisation (no `.item()`, no branching on tensor values), so the
step can be captured as a CUDA graph (cuda.py, `cuda_graph=True`); Python branches only on the
(static) config. That holds when the dataset is resident on the device; the host-memory fallback of
`DeviceBatches` gathers each batch on the host.
"""
import contextlib

import torch

from trainables.augment import diff_augment
from trainables.losses import LOSSES, gradient_penalty
from trainables.training.batches import DeviceBatches


def autocast(cfg, device: torch.device):
    """bf16 autocast on CUDA when asked for; CPU always runs fp32. bf16 has fp32's exponent range,
    so unlike fp16 it needs no loss scaling."""
    if cfg.mixed_precision and device.type == "cuda":
        # Autocast's cache of bf16 weight copies must be off while a CUDA graph is being captured
        # (torch's rule: cached casts would be graph-private tensors reused outside it).
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not torch.cuda.is_current_stream_capturing())
    return contextlib.nullcontext()


def d_input(cfg, x: torch.Tensor, noise_std: "float | torch.Tensor") -> torch.Tensor:
    """What D sees: DiffAugment (same policy for real and fake), then annealed instance noise."""
    x = diff_augment(x, cfg.diffaugment)
    return x + noise_std * torch.randn_like(x) if cfg.instance_noise > 0 else x


def train_step(cfg, G, D, opt_g, opt_d, batches: DeviceBatches, noise_std: "float | torch.Tensor" = 0.0) -> torch.Tensor:
    """Returns the detached [loss_d, loss_g] of this step (still on the device). `noise_std` is a
    0-d device tensor when the step is a CUDA graph (cuda.py), so each replay reads the current std."""
    d_loss_fn, g_loss_fn = LOSSES[cfg.loss]
    device, batch = batches.device, cfg.batch_size
    real_target = 1.0 - cfg.label_smoothing
    for _ in range(cfg.n_critic):
        real = batches.sample(batch)
        with torch.no_grad(), autocast(cfg, device):
            fake = G(torch.randn(batch, cfg.z_dim, device=device)).float()
        with autocast(cfg, device):
            logits_real, logits_fake = D(d_input(cfg, real, noise_std)), D(d_input(cfg, fake, noise_std))
        loss_d = d_loss_fn(logits_real.float(), logits_fake.float(), real_target)
        if cfg.loss == "wgan-gp":
            # Outside autocast on purpose: the penalty's double backward runs in fp32, so the
            # gradient norm it constrains is exact.
            loss_d = loss_d + cfg.gp_weight * gradient_penalty(D, real, fake)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

    # D's weights are constants for G's update; skipping their gradients saves a third of the backward.
    D.requires_grad_(False)
    with autocast(cfg, device):
        logits = D(d_input(cfg, G(torch.randn(batch, cfg.z_dim, device=device)), noise_std))
    loss_g = g_loss_fn(logits.float())
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    D.requires_grad_(True)
    return torch.stack([loss_d.detach(), loss_g.detach()])
