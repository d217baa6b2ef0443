"""WGAN-GP on cat and dog faces: learning rates, optimizer, z_dim and normalisation of G and D.

A define-by-run space (Optuna): betas are searched only for adam/adamw and momentum only for sgd.
Warm-started from seed 000's hand-tuned configuration (and seed 004's WGAN-GP), so the sweep
reports how far its best trial beats those baselines. `--quick` shrinks only the budget.
"""
from sweeper import Sweep, suggest_optimizer
from trainables.config import GANConfig
from trainables.seeds import seed000_wgangp_cat128 as seed000
from trainables.seeds import seed004_gan_wgangp_sngan as seed004


def space(trial):
    suggest_optimizer(trial, ["adam", "adamw", "rmsprop", "sgd"], lr=(1e-5, 1e-3))
    trial.suggest_int("z_dim", 64, 256, log=True)
    trial.suggest_categorical("g_norm", ["batch", "instance", "layer", "none"])
    # No batch norm: the gradient penalty is per sample.
    trial.suggest_categorical("d_norm", ["instance", "layer", "spectral", "none"])


sweep = Sweep(
    name="wgangp",
    config=GANConfig(data="toy-faces", loss="wgan-gp", gp_weight=10.0, n_critic=5, resolution=64,
                     batch_size=64, steps_per_eval=500, num_evals=20),
    space=space,
    warm_start=[seed000, seed004["wgan-gp"]],
    num_samples=32,
)
