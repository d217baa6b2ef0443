"""Exponential moving average of G's weights (torch's AveragedModel); FID is measured on it when on."""
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(cfg, G) -> AveragedModel | None:
    if cfg.ema_decay == 0:
        return None
    # use_buffers: batch-norm running statistics are averaged too, so the EMA G is self-consistent.
    return AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)


@torch.no_grad()
def update_ema(ema: AveragedModel | None, G, kimg: float, start_kimg: float) -> None:
    if ema is None:
        return
    if kimg < start_kimg:
        # Before the start the EMA is G itself; AveragedModel copies G on its first update.
        ema.n_averaged.zero_()
    ema.update_parameters(G)
