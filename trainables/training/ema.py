"""Exponential moving average of G's weights; FID is measured on it when on.

Written by hand instead of torch's `AveragedModel` because that one keeps its update count
(`n_averaged`) as a tensor, compares it and copies it to the device on every update: a blocking
host-device round trip in every G step, which also keeps the loop from running ahead of the GPU.
Here the count is a Python int and one update is one `_foreach_lerp_` (plus a few tiny integer
ops), all queued on the device without waiting.

The result is the one `AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)`
computes (tests/test_step_gpu_ready.py checks it): the first update copies G, later ones lerp every
floating parameter and buffer (batch-norm running statistics included) towards G by 1 - decay, and
integer buffers (`num_batches_tracked`) get `ema * decay + g * (1 - decay)` truncated back to
integers. The state dict keeps AveragedModel's layout (`module.*` plus `n_averaged`), so
checkpoints written before and after this change load either way.
"""
import copy

import torch
from torch import nn

from trainables.compat import foreach_copy_, foreach_lerp_


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.n_averaged = 0  # updates so far, on the host

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """AveragedModel's update: a copy of `model` the first time, the moving average after."""
        if self.n_averaged == 0:
            self.copy_from(model)
            return
        ema_float, model_float, ema_int, model_int = _split(self.module, model)
        if ema_float:
            foreach_lerp_(ema_float, model_float, 1 - self.decay)
        for e, m in zip(ema_int, model_int):
            e.copy_(e * self.decay + m * (1 - self.decay))
        self.n_averaged += 1

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        ema_float, model_float, ema_int, model_int = _split(self.module, model)
        foreach_copy_(ema_float + ema_int, model_float + model_int)
        self.n_averaged += 1

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "n_averaged"] = torch.tensor(self.n_averaged, dtype=torch.long)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        count = state_dict.pop(prefix + "n_averaged", None)  # popped: not a parameter or buffer
        if count is None:
            missing_keys.append(prefix + "n_averaged")
        else:
            self.n_averaged = int(count)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _split(ema_module: nn.Module, model: nn.Module):
    """Parameters then buffers of both models (AveragedModel's order), split into floating and integer."""
    pairs = list(zip([*ema_module.parameters(), *ema_module.buffers()], [*model.parameters(), *model.buffers()],
                     strict=True))
    floating = [(e, m.detach()) for e, m in pairs if e.is_floating_point()]
    integer = [(e, m.detach()) for e, m in pairs if not e.is_floating_point()]
    return ([e for e, _ in floating], [m for _, m in floating], [e for e, _ in integer], [m for _, m in integer])


def build_ema(cfg, G) -> EMA | None:
    return EMA(G, cfg.ema_decay) if cfg.ema_decay > 0 else None


def update_ema(ema: EMA | None, G, kimg: float, start_kimg: float) -> None:
    """After every G step; `kimg` is a host float, so choosing copy or average waits for nothing."""
    if ema is None:
        return
    if kimg < start_kimg:
        # Before the start the EMA is G itself, and the count restarts (as AveragedModel's did).
        ema.n_averaged = 0
        ema.copy_from(G)
    else:
        ema.update_parameters(G)
