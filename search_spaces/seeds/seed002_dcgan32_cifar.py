"""Seed 002: the Keras-tutorial DCGAN at 32x32 on CIFAR-10 dogs (and on cats+dogs).

Strided convolutions in D with LeakyReLU(0.2) and dropout 0.4 and no normalisation; a generator
without batch norm; Adam 2e-4, β1 0.5, z_dim 100, batch 128. Our blocks are 4x4 kernels where the
tutorial used 3x3. The file defaults to toy dogs so it runs anywhere; the published data:
`--data cifar10:dog` (dogs) or `--data cifar10:cat,dog` (cats+dogs).
"""
from ray import tune

from sweeper import Sweep
from trainables.seeds import seed002_dcgan32_cifar

published = seed002_dcgan32_cifar

sweep = Sweep(
    name="seed002-dcgan32-cifar",
    config=published,
    space=dict(
        g_lr=tune.loguniform(5e-5, 1e-3),
        d_lr=tune.loguniform(5e-5, 1e-3),
        g_norm=tune.choice(["none", "batch"]),
        d_dropout=tune.choice([0.0, 0.2, 0.4]),
        z_dim=tune.choice([64, 100, 128]),
    ),
    warm_start=[published],
    num_samples=16,
)
