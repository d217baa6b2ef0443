"""Optimisers with separate G and D learning rates (TTUR when they differ)."""
import torch


def build_optimizer(cfg, params, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2))
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def build_optimizers(cfg, G, D):
    return build_optimizer(cfg, G.parameters(), cfg.g_lr), build_optimizer(cfg, D.parameters(), cfg.d_lr)
