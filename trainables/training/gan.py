"""The GAN training loop, written as commented paragraphs (after stylegan2-ada's training_loop).

`train_gan` runs eval periods of `steps_per_eval` G steps; after each it measures FID, writes a
checkpoint and a sample grid into a fresh directory and calls `report(metrics, checkpoint_dir)`.
Ray wraps `report` around `tune.report`; tests pass a list-appending function.
"""
import math
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from trainables.config import GANConfig
from trainables.models import build_models
from trainables.training.batches import DeviceBatches
from trainables.training.checkpoint import GRID_FILE, load_checkpoint, save_checkpoint
from trainables.training.cuda import make_step, prefer_channels_last, speedups
from trainables.training.ema import build_ema, update_ema
from trainables.training.evaluate import fid_kid, save_grid
from trainables.training.mutation import apply_hyperparameters
from trainables.training.optim import build_optimizers, build_schedule

Report = Callable[[dict, "str | None"], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Training:
    """The mutable state of one run; `stateful()` is exactly what a checkpoint holds."""
    G: torch.nn.Module
    D: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: object
    sched_d: object
    ema: object

    def stateful(self) -> dict:
        return {"G": self.G, "D": self.D, "opt_g": self.opt_g, "opt_d": self.opt_d,
                "sched_g": self.sched_g, "sched_d": self.sched_d, "ema": self.ema}

    def generator(self) -> torch.nn.Module:
        """The generator to evaluate and publish: the EMA one when the run keeps an EMA."""
        return self.ema.module if self.ema is not None else self.G


def build_training(cfg: GANConfig, device: torch.device) -> Training:
    torch.manual_seed(cfg.seed)  # a trial is reproducible from its config alone
    # channels_last before the optimisers and the EMA copy are made, so their state matches it.
    memory_format = torch.channels_last if prefer_channels_last(cfg, device) else torch.preserve_format
    G, D = (m.to(device, memory_format=memory_format) for m in build_models(cfg))
    opt_g, opt_d = build_optimizers(cfg, G, D)
    return Training(G, D, opt_g, opt_d, build_schedule(cfg, opt_g), build_schedule(cfg, opt_d), build_ema(cfg, G))


def restore(run: Training, cfg: GANConfig, directory) -> dict:
    """Loads the checkpoint in `directory` into `run` and applies `cfg`'s mutable hyperparameters
    (mutation.py); returns the saved progress.

    The checkpoint may have been written under another config (a population-based exploit), which
    may have turned the EMA on or off. Turned on (the checkpoint has no EMA): the EMA starts as a
    copy of the restored G, as if it had been started at this step. Turned off (`run.ema` is None):
    the checkpoint's EMA is not read and the generator is G. Any other missing state is an error.
    """
    progress = load_checkpoint(directory, run.stateful(), if_absent={"ema": lambda: run.ema.copy_from(run.G)})
    apply_hyperparameters(run, cfg)
    return progress


def train_gan(cfg: GANConfig, report: Report, *, images: np.ndarray, extractor, ref_stats,
              restore_from: str | None = None) -> dict:
    """Trains until `cfg.num_evals` eval periods are done (or D/G diverge); returns the last metrics."""
    cfg = cfg.validate()
    device = resolve_device(cfg.device)

    # Models, optimisers, LR schedules and EMA; the grid's z is fixed so grids compare across evals.
    run = build_training(cfg, device)
    fixed_z = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(device)

    # The uint8 dataset moves to the device once and batches are sampled there; a set too large for
    # the device stays in host memory and batches are copied over asynchronously (batches.py).
    batches = DeviceBatches(images, device)

    # Resume: weights, optimiser moments, schedules, EMA, RNG and counters, so the run continues
    # bit-identically; under a mutated config (a PBT exploit) with that config's hyperparameters.
    progress = {"eval_period": 0, "step": 0, "kimg": 0.0}
    if restore_from is not None:
        progress = restore(run, cfg, restore_from)

    # The step itself: eager, or (cuda_graph, on a GPU with the data resident) captured once and
    # replayed; made after the restore, so a graph captures the restored tensors and the restored
    # trial's own n_critic, gp_weight and betas (a mutated config's, after an exploit).
    step = make_step(cfg, run, batches)

    metrics = {}
    while progress["eval_period"] < cfg.num_evals:
        # Train one eval period, with cuDNN autotuning and TF32 matmuls on a GPU (evaluation keeps
        # the FID code's own precision settings).
        with speedups(cfg, device):
            metrics, progress = _train_period(cfg, run, step, batches.device, progress)

        # Divergence ends the trial cleanly: report it (no checkpoint of a broken state) and stop.
        if not (math.isfinite(metrics["loss_d"]) and math.isfinite(metrics["loss_g"])):
            metrics.update(fid=float("inf"), kid=float("inf"), diverged=1.0)
            report(metrics, None)
            return metrics

        # Evaluate, checkpoint and report in one directory that the reporter takes over.
        metrics.update(fid_kid(run.generator(), cfg, extractor, ref_stats), diverged=0.0)
        with tempfile.TemporaryDirectory(prefix="sweeper-ckpt-") as directory:
            save_checkpoint(directory, run.stateful(), progress)
            save_grid(run.generator(), fixed_z, f"{directory}/{GRID_FILE}")
            report(metrics, directory)
    return metrics


def _train_period(cfg: GANConfig, run: Training, step_fn: Callable, device: torch.device,
                  progress: dict) -> tuple[dict, dict]:
    """steps_per_eval G steps; losses are summed on the device and read once at the end."""
    total_steps = cfg.num_evals * cfg.steps_per_eval
    kimg_per_step = cfg.n_critic * cfg.batch_size / 1000  # real images shown to D
    loss_sum = torch.zeros(2, device=device)
    start = time.perf_counter()
    for i in range(cfg.steps_per_eval):
        step = progress["step"] + i
        noise_std = cfg.instance_noise * max(0.0, 1.0 - step / total_steps)  # annealed to 0 at the end
        loss_sum += step_fn(noise_std)
        run.sched_g.step()
        run.sched_d.step()
        update_ema(run.ema, run.G, progress["kimg"] + (i + 1) * kimg_per_step, cfg.ema_start_kimg)
    loss_d, loss_g = (loss_sum / cfg.steps_per_eval).tolist()
    seconds = time.perf_counter() - start
    progress = {"eval_period": progress["eval_period"] + 1, "step": progress["step"] + cfg.steps_per_eval,
                "kimg": progress["kimg"] + cfg.steps_per_eval * kimg_per_step}
    metrics = {"eval_period": progress["eval_period"], "kimg": progress["kimg"], "loss_d": loss_d,
               "loss_g": loss_g, "img_per_s": cfg.steps_per_eval * kimg_per_step * 1000 / seconds, "train_s": seconds,
               "lr_g": float(run.opt_g.param_groups[0]["lr"]), "lr_d": float(run.opt_d.param_groups[0]["lr"])}
    return metrics, progress
