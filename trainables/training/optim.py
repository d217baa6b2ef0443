"""Optimisers with separate G and D learning rates (TTUR when they differ) and their LR schedules."""
import torch
from torch.optim import lr_scheduler


def build_optimizer(cfg, params, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def build_schedule(cfg, optimizer) -> lr_scheduler.LRScheduler:
    """Stepped once per G step over the whole run (num_evals * steps_per_eval G steps)."""
    total = cfg.num_evals * cfg.steps_per_eval
    if cfg.lr_schedule == "linear-decay":
        return lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=total)
    if cfg.lr_schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.lr_schedule == "step":
        return lr_scheduler.MultiStepLR(optimizer, milestones=[total // 2, total * 3 // 4], gamma=cfg.lr_gamma)
    return lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # "none": one code path for all


def build_optimizers(cfg, G, D):
    return build_optimizer(cfg, G.parameters(), cfg.g_lr), build_optimizer(cfg, D.parameters(), cfg.d_lr)
