"""Seed 001: DCGAN at 64x64 (Radford et al. 2015) with the project's optimisations.

Adam 2e-4, β1 0.5, batch 128, z_dim 100, BatchNorm in G and D (not in D's first block), plus:
linear LR decay to 0, one-sided label smoothing (real target 0.9), dropout in D, Gaussian instance
noise on D's inputs (annealed to 0), bf16 mixed precision on GPU, and checkpoints every eval period
(every sweeper trial has those).
"""
from ray import tune

from sweeper import Sweep
from trainables.seeds import seed001_dcgan64_tricks

published = seed001_dcgan64_tricks

sweep = Sweep(
    name="seed001-dcgan64-tricks",
    config=published,
    space=dict(
        g_lr=tune.loguniform(5e-5, 1e-3),
        d_lr=tune.loguniform(5e-5, 1e-3),
        lr_schedule=tune.choice(["none", "linear-decay", "cosine"]),
        label_smoothing=tune.choice([0.0, 0.1, 0.2]),
        d_dropout=tune.choice([0.0, 0.3, 0.5]),
        instance_noise=tune.choice([0.0, 0.1, 0.2]),
    ),
    warm_start=[published],
    num_samples=16,
)
