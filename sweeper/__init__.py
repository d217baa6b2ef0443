"""sweeper: hyperparameter sweeps of GAN training (Ray Tune + Optuna + successive halving or population-based training, tracked in MLflow).

Search-space files import `Sweep` and its options from here; importing it starts nothing and
imports neither Ray nor torch. The packages below, from the top layer down (each imports only
from the layers under it; `lint-imports` checks it):

    cli.py       the commands
    driver/      runs in the driver process: run, resume, final evaluation, cluster checks, loading a file
    trial/       runs in a Ray worker: the function Tune calls, delivery to MLflow, its checkpoints
    search/      the searcher, scheduler, footprint, Tuner assembly, console   } side by side,
    kinds/       what differs per kind of trial (GAN, classifier)             } neither imports the other
    tracking/    MLflow: runs, registry, outcomes, status/export, figures, summary (no Ray)
    definition/  the Sweep and its options (no Ray, MLflow or torch)
"""
from sweeper.definition import (
    ASHA,
    PB2,
    PBT,
    TPE,
    Budget,
    FinalEval,
    Promotion,
    Quick,
    Range,
    Resources,
    Sweep,
    SweepError,
    suggest_optimizer,
)

__all__ = ["Sweep", "SweepError", "TPE", "Promotion", "ASHA", "PBT", "PB2", "Range", "Resources", "FinalEval", "Quick", "Budget",
           "suggest_optimizer"]
