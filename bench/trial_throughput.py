"""Training throughput of one trial: our step vs a seed-style loop, same models, same photos, side by side.

    python bench/trial_throughput.py          # CPU-sized: widths 8, batch 16, 256 photos, a few steps
    python bench/trial_throughput.py --gpu    # full size on CUDA: widths 64, batch 64, all photos,
                                              # plus our step as a CUDA graph (cuda_graph=True)

Ours is train_gan's inner loop as it runs in a trial (`_train_period`: the uint8 set resident on
the device via DeviceBatches, `make_step`, LR schedules, losses summed on the device). The seed-style
loop is how the seed projects train: torchvision ImageFolder + DataLoader workers decoding JPEGs,
an eager step, `loss.item()` every step for logging; it uses the same bf16 autocast as ours on CUDA,
so the ratio is the loop's, not the precision's. Both at 64x64: DCGAN (bce, n_critic 1) and WGAN-GP
(n_critic 5, gradient penalty). img/s counts real images shown to D (n_critic x batch per G step).
Photos: ../shared/data/afhq-cat-128 next to the repository (see its SOURCE.md); where they are
absent (the GPU machine: ../shared/data does not travel), 5,000 toy faces written as JPEG files.
"""
import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from trainables.config import GANConfig
from trainables.data.decode import decode
from trainables.losses import LOSSES, gradient_penalty
from trainables.training.batches import DeviceBatches
from trainables.training.cuda import make_step, speedups
from trainables.training.gan import _train_period, build_training
from trainables.training.step import autocast

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "afhq-cat-128" / "train"

DCGAN = GANConfig(resolution=64, arch="dcgan", loss="bce", g_norm="batch", d_norm="none", n_critic=1)
WGANGP = GANConfig(resolution=64, arch="dcgan", loss="wgan-gp", g_norm="batch", d_norm="none", n_critic=5,
                   g_lr=1e-4, d_lr=1e-4, beta1=0.0, beta2=0.9)
CPU_SIZE = dict(g_width=8, d_width=8, batch_size=16, device="cpu")
GPU_SIZE = dict(g_width=64, d_width=64, batch_size=64, device="cuda")


def seed_style(cfg: GANConfig, folder: Subset, steps: int, warmup: int, workers: int) -> float:
    """G steps per second of the seed projects' loop."""
    device = torch.device(cfg.device)
    run = build_training(cfg, device)
    G, D, opt_g, opt_d = run.G, run.D, run.opt_g, run.opt_d
    d_loss_fn, g_loss_fn = LOSSES[cfg.loss]
    loader = DataLoader(folder, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    batches = (x for epoch in itertools.count() for x, _ in loader)

    def g_step():
        for _ in range(cfg.n_critic):
            real = next(batches).to(device)
            z = torch.randn(cfg.batch_size, cfg.z_dim, device=device)
            with autocast(cfg, device):
                fake = G(z).detach()
                loss_d = d_loss_fn(D(real).float(), D(fake).float())
            if cfg.loss == "wgan-gp":
                loss_d = loss_d + cfg.gp_weight * gradient_penalty(D, real, fake.float())
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
        with autocast(cfg, device):
            loss_g = g_loss_fn(D(G(torch.randn(cfg.batch_size, cfg.z_dim, device=device))).float())
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        return loss_d.item(), loss_g.item()  # the per-step logging every seed loop does

    for _ in range(warmup):
        g_step()
    start = time.perf_counter()
    for _ in range(steps):
        g_step()
    return steps / (time.perf_counter() - start)


def ours(cfg: GANConfig, images: np.ndarray, steps: int, warmup: int) -> float:
    """G steps per second of a trial's own loop (the first period warms up, and captures a graph)."""
    device = torch.device(cfg.device)
    run = build_training(cfg, device)
    step = make_step(cfg, run, DeviceBatches(images, device))
    progress = {"eval_period": 0, "step": 0, "kimg": 0.0}
    with speedups(cfg, device):
        _, progress = _train_period(cfg.replace(steps_per_eval=warmup), run, step, device, progress)
        metrics, _ = _train_period(cfg.replace(steps_per_eval=steps), run, step, device, progress)
    return metrics["img_per_s"] / (cfg.n_critic * cfg.batch_size)


def toy_photos(n: int) -> Path:
    """n toy faces as 128 px JPEG files in a temporary ImageFolder layout (cat/, dog/)."""
    import tempfile

    from PIL import Image

    from trainables.data import toy_faces

    root = Path(tempfile.mkdtemp(prefix="toy-photos-"))
    data = toy_faces(n, 128, seed=0)
    for i, (image, label) in enumerate(zip(data.images, data.labels)):
        folder = root / data.classes[label]
        folder.mkdir(exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:05d}.jpg", quality=95)
    return root


def load_photos(n: int | None, resolution: int) -> tuple[Subset, np.ndarray]:
    """The same files for both loops: ImageFolder's (first n of its sorted list), and our uint8 set."""
    transform = transforms.Compose([transforms.Resize(resolution), transforms.CenterCrop(resolution),
                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)])
    folder = datasets.ImageFolder(str(PHOTOS if PHOTOS.is_dir() else toy_photos(5000)), transform=transform)
    indices = range(len(folder) if n is None else min(n, len(folder)))
    images = np.stack([decode(Path(folder.samples[i][0]).read_bytes(), resolution) for i in indices])
    return Subset(folder, indices), images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="full size on CUDA, with the CUDA-graph variant")
    parser.add_argument("--steps", type=int, help="timed G steps per measurement (default 30 CPU, 300 GPU)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of the seed-style loop (default 1 CPU, 8 GPU)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a small shared machine two threads' OpenMP "
                             "barriers made each step ~50x slower, and the DataLoader worker needs a core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not PHOTOS.is_dir():
        print(f"photos not found at {PHOTOS}: using 5,000 toy faces written as JPEG files")
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu: no CUDA device")
    size = GPU_SIZE if args.gpu else CPU_SIZE
    steps = args.steps or (300 if args.gpu else 30)
    warmup = 30 if args.gpu else 3
    workers = args.workers if args.workers is not None else (8 if args.gpu else 1)
    folder, images = load_photos(None if args.gpu else 256, 64)
    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"{device}; {len(images)} images at 64x64; batch {size['batch_size']}, widths {size['g_width']}; "
          f"{steps} timed G steps after {warmup}; seed-style DataLoader workers: {workers}")
    print(f"{'model':<12}{'loop':<14}{'G-steps/s':>11}{'img/s':>10}{'vs seed':>9}")
    for name, base in (("DCGAN-64", DCGAN), ("WGAN-GP-64", WGANGP)):
        cfg = base.replace(**size)
        per_step = cfg.n_critic * cfg.batch_size
        rows = [("seed-style", seed_style(cfg, folder, steps, warmup, workers)), ("ours", ours(cfg, images, steps, warmup))]
        if args.gpu:
            rows.append(("ours+graph", ours(cfg.replace(cuda_graph=True), images, steps, warmup)))
        for loop, rate in rows:
            print(f"{name:<12}{loop:<14}{rate:>11.2f}{rate * per_step:>10.0f}{rate / rows[0][1]:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
