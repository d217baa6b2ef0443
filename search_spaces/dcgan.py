"""DCGAN on cat and dog faces: learning rates, optimizer, z_dim, normalisation, loss and D dropout.

A define-by-run space (Optuna): betas only for adam/adamw, momentum only for sgd. The loss is BCE or
least squares, so seeds 001 (DCGAN 64 with its tricks), 002 (DCGAN 32, CIFAR-10) and 003 (LSGAN
dogs) are all warm starts: the sweep reports how far its best trial beats the best of them.
"""
from sweeper import Sweep, suggest_optimizer
from trainables.config import GANConfig
from trainables.seeds import seed001_dcgan64_tricks as seed001
from trainables.seeds import seed002_dcgan32_cifar as seed002
from trainables.seeds import seed003_lsgan_dog as seed003


def space(trial):
    suggest_optimizer(trial, ["adam", "adamw", "rmsprop", "sgd"], lr=(1e-5, 1e-3))
    trial.suggest_categorical("loss", ["bce", "lsgan"])
    trial.suggest_int("z_dim", 64, 256, log=True)
    trial.suggest_categorical("g_norm", ["batch", "instance", "layer", "none"])
    trial.suggest_categorical("d_norm", ["batch", "instance", "layer", "spectral", "none"])
    trial.suggest_float("d_dropout", 0.0, 0.5)


sweep = Sweep(
    name="dcgan",
    config=GANConfig(data="toy-faces", loss="bce", resolution=64, batch_size=64, steps_per_eval=500,
                     num_evals=20),
    space=space,
    warm_start=[seed001, seed002, seed003],
    num_samples=32,
)
