"""A cat-vs-dog classifier trained on images from the best cat and dog generators, tested on real photos.

Run the two generator sweeps first (README, "From generators to a classifier"); this file pulls
`models:/cats-generator@best` and `models:/dogs-generator@best`, resolved once to exact versions.
Searched: how much real data goes into each batch, how many synthetic images per class (a fixed
pool, or fresh draws every batch), the architecture and the optimiser. The real-only point
(real_fraction=1) is the reference of the CAS ratio; the synthetic-only point is the hand-picked
start of the search. The real photos are CIFAR-10's cats and dogs: its training split for training and
validation, its test split for the test (downloaded once, or from the SWEEPER_DATASETS mirror). Point
`data`/`test_data` at your own class folders with --set.
"""
from sweeper import Sweep
from trainables.classifier import ClassifierConfig


def space(trial):
    real_fraction = trial.suggest_categorical("real_fraction", [0.0, 0.5, 1.0])
    if real_fraction < 1:
        trial.suggest_categorical("synthetic_per_class", [0, 1000, 5000])  # 0 = fresh draws every batch
    if trial.suggest_categorical("arch", ["googlenet", "resnet18"]) == "googlenet":
        trial.suggest_categorical("aux_logits", [True, False])
    if trial.suggest_categorical("optimizer", ["adam", "sgd"]) == "sgd":
        trial.suggest_float("momentum", 0.5, 0.95)
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)


REAL_ONLY = {"real_fraction": 1.0, "arch": "googlenet", "aux_logits": True, "optimizer": "adam", "lr": 1e-3}
SYNTHETIC_ONLY = {**REAL_ONLY, "real_fraction": 0.0, "synthetic_per_class": 0}

sweep = Sweep(
    name="catdog",
    config=ClassifierConfig(
        data="cifar10:cat,dog", test_data="cifar10/test:cat,dog", resolution=32,
        generators="cat=models:/cats-generator@best,dog=models:/dogs-generator@best",
        batch_size=64, steps_per_eval=200, num_evals=10),
    space=space,
    warm_start=[REAL_ONLY, SYNTHETIC_ONLY],
    num_samples=16,
)
