"""Seed 003: a dog-face GAN whose discriminator is trained with MSE (least squares, Mao et al. 2017).

DCGAN networks at 64x64, D regressing real to 1 and fake to 0 and G pulling fakes to 1; Adam 2e-4,
β1 0.5, z_dim 100, batch 64. Real dogs: `--data afhq-dog` (AFHQ's dog faces), `--data cifar10:dog` (32 px) or
any folder of dog photos.
"""
from ray import tune

from sweeper import Sweep
from trainables.seeds import seed003_lsgan_dog

published = seed003_lsgan_dog

sweep = Sweep(
    name="seed003-lsgan-dog",
    config=published,
    space=dict(
        g_lr=tune.loguniform(5e-5, 1e-3),
        d_lr=tune.loguniform(5e-5, 1e-3),
        d_norm=tune.choice(["batch", "spectral", "none"]),
        label_smoothing=tune.choice([0.0, 0.1]),
    ),
    warm_start=[published],
    num_samples=16,
)
