"""sweeper: hyperparameter sweeps of GAN training (Ray Tune + Optuna + ASHA, tracked in MLflow).

Search-space files import `Sweep` and friends from here; importing it does not start Ray.
"""
from sweeper.spec import ASHA, TPE, FinalEval, Quick, Resources, Sweep, SweepError

__all__ = ["Sweep", "SweepError", "TPE", "ASHA", "Resources", "FinalEval", "Quick"]
