"""The GAN training loop, written as commented paragraphs (after stylegan2-ada's training_loop).

`train_gan` runs eval periods of `steps_per_eval` G steps; after each it measures FID, writes a
checkpoint and a sample grid into a fresh directory and calls `report(metrics, checkpoint_dir)`.
Ray wraps `report` around `tune.report`; tests pass a list-appending function.
"""
import math
import tempfile
import time
import warnings
from typing import Callable

import numpy as np
import torch

from trainables.config import GANConfig
from trainables.models import build_models
from trainables.training.checkpoint import GRID_FILE, load_checkpoint, save_checkpoint
from trainables.training.evaluate import fid, save_grid
from trainables.training.optim import build_optimizers
from trainables.training.step import train_step

Report = Callable[[dict, "str | None"], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_gan(cfg: GANConfig, images: np.ndarray, report: Report, *, extractor, ref_stats,
              restore_from: str | None = None) -> dict:
    """Trains until `cfg.num_evals` eval periods are done (or D/G diverge); returns the last metrics."""
    cfg = cfg.validate()
    device = resolve_device(cfg.device)

    # Models and optimisers, seeded so a trial is reproducible from its config alone.
    torch.manual_seed(cfg.seed)
    G, D = (m.to(device) for m in build_models(cfg))
    opt_g, opt_d = build_optimizers(cfg, G, D)
    fixed_z = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(device)

    # The whole uint8 dataset moves to the device once; batches are sampled there.
    with warnings.catch_warnings():
        # Under Ray the array is a read-only zero-copy view of the object store; we never write to it.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        data = torch.as_tensor(images).to(device)

    # Resume: weights, optimiser moments, RNG and counters, so the run continues bit-identically.
    progress = {"eval_period": 0, "step": 0, "kimg": 0.0}
    if restore_from is not None:
        progress = load_checkpoint(restore_from, G=G, D=D, opt_g=opt_g, opt_d=opt_d)

    metrics = {}
    while progress["eval_period"] < cfg.num_evals:
        # Train one eval period; losses are summed on the device and read once at the end.
        start = time.perf_counter()
        loss_sum = torch.zeros(2, device=device)
        for _ in range(cfg.steps_per_eval):
            loss_sum += train_step(cfg, G, D, opt_g, opt_d, data)
        loss_d, loss_g = (loss_sum / cfg.steps_per_eval).tolist()
        seconds = time.perf_counter() - start
        shown = cfg.steps_per_eval * cfg.n_critic * cfg.batch_size
        progress = {"eval_period": progress["eval_period"] + 1,
                    "step": progress["step"] + cfg.steps_per_eval,
                    "kimg": progress["kimg"] + shown / 1000}
        metrics = {"eval_period": progress["eval_period"], "kimg": progress["kimg"],
                   "loss_d": loss_d, "loss_g": loss_g, "img_per_s": shown / seconds}

        # Divergence ends the trial cleanly: report it (no checkpoint of a broken state) and stop.
        if not (math.isfinite(loss_d) and math.isfinite(loss_g)):
            metrics.update(fid=float("inf"), diverged=1.0)
            report(metrics, None)
            return metrics

        # Evaluate, checkpoint and report in one directory that the reporter takes over.
        metrics.update(fid=fid(G, cfg, extractor, ref_stats), diverged=0.0)
        with tempfile.TemporaryDirectory(prefix="sweeper-ckpt-") as directory:
            save_checkpoint(directory, G=G, D=D, opt_g=opt_g, opt_d=opt_d, progress=progress)
            save_grid(G, fixed_z, f"{directory}/{GRID_FILE}")
            report(metrics, directory)
    return metrics
