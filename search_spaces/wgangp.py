"""WGAN-GP on cat and dog faces: learning rates, optimizer, z_dim and normalisation of G and D.

Warm-started from seed 000's hand-tuned configuration, so the sweep shows how far its best trial
beats the baseline. `--quick` shrinks only the budget (see sweeper.spec.Quick).
"""
from ray import tune

from sweeper import Sweep
from trainables.config import GANConfig

seed_000 = dict(optimizer="adam", g_lr=8e-5, d_lr=1e-4, z_dim=200, d_norm="instance", g_norm="batch")

sweep = Sweep(
    name="wgangp",
    config=GANConfig(loss="wgan-gp", gp_weight=10.0, n_critic=5, beta1=0.5, beta2=0.999,
                     resolution=64, batch_size=64, steps_per_eval=500, num_evals=20),
    space=dict(
        g_lr=tune.loguniform(1e-5, 1e-3),
        d_lr=tune.loguniform(1e-5, 1e-3),
        optimizer=tune.choice(["adam", "rmsprop"]),
        z_dim=tune.randint(64, 257),
        d_norm=tune.choice(["instance", "layer", "none"]),
        g_norm=tune.choice(["batch", "none"]),
    ),
    warm_start=[seed_000],
    num_samples=32,
)
