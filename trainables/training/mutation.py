"""A restored checkpoint trained on under another config: what population-based training does when a
trial exploits another trial's checkpoint and explores a mutated config.

Loading a checkpoint puts back the optimisers' param groups and the LR schedulers' base rates as
they were saved, i.e. the donor's learning rates and betas. `apply_hyperparameters` then applies the
config's mutable hyperparameters, and nothing else: weights, optimiser moments, step counts and the
schedule's position stay the checkpoint's. When the config is the one the checkpoint was written
with (a plain pause and resume) it changes nothing, so a resume stays bit-identical.

Only `MUTABLE_KEYS` may differ between a checkpoint's config and the config it is restored under.
Architecture and shape keys (z_dim, widths, norms, arch, resolution) and the kind of optimiser or
schedule are not mutable: the checkpoint's tensors or optimiser state would not fit them.

Where the other mutable keys take effect without anything here:
- n_critic and gp_weight are read from the config in every step (step.train_step) and nothing
  caches them; a CUDA graph (cuda.GraphedStep) is captured after the restore, so it unrolls the
  restored trial's n_critic and bakes in its gp_weight.
- ema_decay is the EMA's plain `decay` attribute, set from the config when the EMA is built and
  not part of its state dict. An EMA turned on by the mutation (the checkpoint has none) starts as
  a copy of the restored G; one turned off leaves the checkpoint's EMA unread (gan.restore).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trainables.training.gan import Training

MUTABLE_KEYS = frozenset({"g_lr", "d_lr", "beta1", "beta2", "momentum", "weight_decay", "n_critic", "gp_weight",
                          "ema_decay"})


def apply_hyperparameters(run: Training, cfg) -> None:
    """Sets `cfg`'s learning rates, betas, momentum and weight decay in the restored optimisers and
    LR schedules of `run`, touching only values that differ from the checkpoint's."""
    for optimizer, schedule, lr in ((run.opt_g, run.sched_g, cfg.g_lr), (run.opt_d, run.sched_d, cfg.d_lr)):
        apply_base_lr(optimizer, schedule, lr)
        apply_group_values(optimizer, {"betas": (cfg.beta1, cfg.beta2), "momentum": cfg.momentum,
                                       "weight_decay": cfg.weight_decay})


def apply_base_lr(optimizer: torch.optim.Optimizer, schedule, lr: float) -> None:
    """Rebases the schedule on `lr`, at the same point of its shape.

    The schedule's base rate lives twice, as each group's `initial_lr` and as the scheduler's
    `base_lrs`; both become `lr`. The current rate becomes lr * (current / old base), so the
    factor the schedule had reached is kept. The next `schedule.step()` then gives
    lr * factor(step + 1) for every schedule of optim.build_schedule: LinearLR, CosineAnnealingLR
    (eta_min 0) and MultiStepLR scale the current rate by a ratio of factors, and LambdaLR
    multiplies `base_lrs` by its factor (tests/test_exploit_hyperparameters.py checks each).
    """
    changed = False
    for i, group in enumerate(optimizer.param_groups):
        old_base = group["initial_lr"]
        if old_base == lr:
            continue
        group["lr"] = lr * (group["lr"] / old_base)
        group["initial_lr"] = lr
        schedule.base_lrs[i] = lr
        changed = True
    if changed:
        # get_last_lr() answers from this list, which torch refreshes only in step(); without it the
        # scheduler would report (and checkpoint) the donor's rate until its next step.
        schedule._last_lr = [group["lr"] for group in optimizer.param_groups]


def apply_group_values(optimizer: torch.optim.Optimizer, values: dict) -> None:
    """Sets each value in every param group that has that key and holds another value: Adam and AdamW
    groups have `betas`, SGD and RMSprop groups `momentum`, all of them `weight_decay`."""
    for group in optimizer.param_groups:
        for key, value in values.items():
            if key in group and group[key] != value:
                group[key] = value
        if isinstance(optimizer, torch.optim.RMSprop):
            add_missing_momentum_buffers(optimizer, group)


def add_missing_momentum_buffers(optimizer: torch.optim.RMSprop, group: dict) -> None:
    """RMSprop creates a parameter's momentum buffer only at its first step and only when momentum
    was > 0 then; turned on afterwards it would look the buffer up and fail. A zero buffer, what it
    would have created, starts the momentum from now."""
    if group["momentum"] <= 0:
        return
    for p in group["params"]:
        state = optimizer.state.get(p)
        if state and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
