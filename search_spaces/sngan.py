"""SNGAN (Miyato et al. 2018): DCGAN or ResNet networks, BCE or hinge loss, spectral norm in D.

A define-by-run space (Optuna): betas only for adam/adamw, momentum only for sgd; the critic steps
are searched for the ResNet only (Miyato et al. used 5 there, 1 with the DCGAN networks).
Warm-started from seed 004's three spectral-norm configurations.
"""
from sweeper import Sweep, suggest_optimizer
from trainables.config import GANConfig
from trainables.seeds import seed004_gan_wgangp_sngan as seed004


def space(trial):
    arch = trial.suggest_categorical("arch", ["dcgan", "resnet"])
    if arch == "resnet":
        trial.suggest_categorical("n_critic", [1, 2, 5])
    trial.suggest_categorical("loss", ["bce", "hinge"])
    suggest_optimizer(trial, ["adam", "adamw", "rmsprop", "sgd"], lr=(1e-5, 1e-3))
    trial.suggest_int("z_dim", 64, 256, log=True)
    trial.suggest_categorical("g_norm", ["batch", "instance", "layer", "none"])
    trial.suggest_categorical("d_norm", ["spectral", "layer", "none"])


sweep = Sweep(
    name="sngan",
    config=GANConfig(data="toy-faces", d_norm="spectral", resolution=64, batch_size=64, steps_per_eval=500,
                     num_evals=20),
    space=space,
    warm_start=[seed004["sngan-bce"], seed004["sngan-hinge"], seed004["sngan-resnet"]],
    num_samples=32,
)
