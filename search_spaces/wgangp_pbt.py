"""WGAN-GP trained as a population (PBT): 16 members train side by side; every 2 eval periods the
worst quarter by FID takes the checkpoint of one of the best quarter and trains it on with mutated
learning rates, beta1, critic steps, gradient-penalty weight and EMA decay.

The space draws the initial population, warm starts first: what no exploit can change (z_dim and
the normalisations are copied from the donor with its weights) and where the mutated keys start.
What the winner followed is its schedule: the parent run's lineage.png, and the registered model's
schedule.json (README, "Population-based training").
"""
from sweeper import PBT, Range, Sweep
from trainables.config import GANConfig
from trainables.seeds import seed000_wgangp_cat128 as seed000
from trainables.seeds import seed004_gan_wgangp_sngan as seed004


def space(trial):
    trial.suggest_float("g_lr", 1e-5, 1e-3, log=True)
    trial.suggest_float("d_lr", 1e-5, 1e-3, log=True)
    trial.suggest_categorical("n_critic", [1, 2, 5])
    trial.suggest_int("z_dim", 64, 256, log=True)
    trial.suggest_categorical("g_norm", ["batch", "instance", "layer", "none"])
    # No batch norm: the gradient penalty is per sample.
    trial.suggest_categorical("d_norm", ["instance", "layer", "spectral", "none"])


sweep = Sweep(
    name="wgangp-pbt",
    # adam for every member: the optimizer's state is what an exploit carries over, so it is not mutated.
    config=GANConfig(data="toy-faces", loss="wgan-gp", gp_weight=10.0, optimizer="adam", beta1=0.0, beta2=0.9,
                     resolution=64, batch_size=64, ema_start_kimg=320.0, steps_per_eval=500, num_evals=20),
    space=space,
    scheduler=PBT(interval=2, quantile=0.25, mutations={
        "g_lr": Range(1e-5, 1e-3, log=True), "d_lr": Range(1e-5, 1e-3, log=True), "beta1": [0.0, 0.5],
        "n_critic": [1, 2, 5], "gp_weight": Range(1.0, 100.0, log=True), "ema_decay": [0.0, 0.999, 0.9999]}),
    warm_start=[seed000, seed004["wgan-gp"]],
    num_samples=16,
)
