"""Seed 004: plain GAN, WGAN-GP and SNGAN side by side at 64x64, as in Miyato et al. 2018.

Five published configurations, each a warm start of this one sweep:
- gan: DCGAN networks, non-saturating BCE, no normalisation in D, Adam 2e-4 (0.5, 0.999);
- wgan-gp: the same networks, WGAN-GP with 5 critic steps, Adam 1e-4 (0.0, 0.9) (Gulrajani et al.);
- sngan-bce and sngan-hinge: spectral norm on every D layer, BCE or hinge loss, Adam 2e-4 (0.5, 0.999);
- sngan-resnet: the ResNet G/D of Miyato et al. with hinge loss and spectral norm, 5 D steps,
  Adam 2e-4 (0.0, 0.9).
The sweep searches exactly the axes those five differ on, so its best trial is compared with all.
"""
from ray import tune

from sweeper import Sweep
from trainables.seeds import seed004_gan_wgangp_sngan

published = seed004_gan_wgangp_sngan
base = published["gan"]

sweep = Sweep(
    name="seed004-gan-wgangp-sngan",
    config=base,
    space=dict(
        arch=tune.choice(["dcgan", "resnet"]),
        loss=tune.choice(["bce", "wgan-gp", "hinge"]),
        d_norm=tune.choice(["none", "spectral"]),
        n_critic=tune.choice([1, 5]),
        g_lr=tune.loguniform(5e-5, 5e-4),
        d_lr=tune.loguniform(5e-5, 5e-4),
        beta1=tune.choice([0.0, 0.5]),
        beta2=tune.choice([0.9, 0.999]),
    ),
    warm_start=list(published.values()),
    num_samples=24,
)
