"""WGAN-GP on cat and dog faces: learning rates, optimizer, z_dim, normalisation of G and D, critic
steps, LR schedule, EMA of G's weights and DiffAugment.

A define-by-run space (Optuna): betas are searched only for adam/adamw and momentum only for sgd.
Warm-started from seed 000's hand-tuned configuration (and seed 004's WGAN-GP), so the sweep
reports how far its best trial beats those baselines. `--quick` shrinks only the budget.
The LR schedule and the EMA act late in a run, so early rungs barely tell their values apart:
judge them by the trials that reach the full horizon (README, "What `wgangp.py` searches").
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
    # Gulrajani et al.'s 5 critic steps per G step (the seeds' value) against cheaper 1 and 2.
    trial.suggest_categorical("n_critic", [1, 2, 5])
    # Both anneal the lr to 0 by the end of the run. No "step": it would need lr_gamma searched too.
    # Not for sgd, which keeps a constant lr: with `--set cuda_graph=true` it cannot have a schedule.
    if trial.params["optimizer"] != "sgd":
        trial.suggest_categorical("lr_schedule", ["none", "linear-decay", "cosine"])
    # Off, or an average over ~1k / ~10k G steps (from ema_start_kimg on, below).
    trial.suggest_categorical("ema_decay", [0.0, 0.999, 0.9999])
    # Off, or Zhao et al.'s policy for small datasets (the cat and dog photo sets: ~5,000 each).
    trial.suggest_categorical("diffaugment", ["", "color,translation,cutout"])


sweep = Sweep(
    name="wgangp",
    # n_critic is searched, so not fixed here. The EMA is G itself for the first 320 kimg (1,000 G
    # steps at n_critic 5, 5,000 at 1): averaged from step 0 it would still hold ~37% of the untrained
    # G after 10,000 steps at 0.9999. --quick (<= 96 kimg) never reaches it: there the EMA is G.
    config=GANConfig(data="toy-faces", loss="wgan-gp", gp_weight=10.0, resolution=64, batch_size=64,
                     ema_start_kimg=320.0, steps_per_eval=500, num_evals=20),
    space=space,
    warm_start=[seed000, seed004["wgan-gp"]],
    num_samples=32,
)
