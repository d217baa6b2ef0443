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
from trainables.config import GANConfig

base = GANConfig(data="toy-faces", resolution=64, arch="dcgan", z_dim=128, g_width=64, d_width=64,
                 g_norm="batch", d_norm="none", loss="bce", optimizer="adam", g_lr=2e-4, d_lr=2e-4,
                 beta1=0.5, beta2=0.999, batch_size=64)

published = {
    "gan": base,
    "wgan-gp": base.replace(loss="wgan-gp", n_critic=5, g_lr=1e-4, d_lr=1e-4, beta1=0.0, beta2=0.9),
    "sngan-bce": base.replace(d_norm="spectral"),
    "sngan-hinge": base.replace(d_norm="spectral", loss="hinge"),
    "sngan-resnet": base.replace(arch="resnet", d_norm="spectral", loss="hinge", n_critic=5,
                                 beta1=0.0, beta2=0.9),
}

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
