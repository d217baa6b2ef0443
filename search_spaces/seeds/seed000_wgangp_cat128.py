"""Seed 000: WGAN-GP on cat faces at 128x128.

Generator: 5 ConvTranspose+BatchNorm+ReLU blocks (7 at 512x512); critic: 5 Conv+InstanceNorm+
LeakyReLU blocks (the first without a norm, as in DCGAN). Adam, g_lr 8e-5, critic lr 1e-4,
z_dim 200, batch 64, 5 critic steps per G step, gradient penalty λ = 10. The project did not
publish its betas; we use DCGAN's (0.5, 0.999). Real cats: `--data afhq-cat`.
"""
from ray import tune

from sweeper import Sweep
from trainables.seeds import seed000_wgangp_cat128

published = seed000_wgangp_cat128

sweep = Sweep(
    name="seed000-wgangp-cat128",
    config=published,
    space=dict(
        g_lr=tune.loguniform(2e-5, 4e-4),
        d_lr=tune.loguniform(2e-5, 4e-4),
        z_dim=tune.choice([100, 128, 200, 256]),
        n_critic=tune.choice([1, 2, 5]),
        gp_weight=tune.choice([1.0, 10.0]),
    ),
    warm_start=[published],
    num_samples=16,
)
