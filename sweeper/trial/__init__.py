"""What runs in a Ray worker for one trial: the function Tune calls (`run_trial`, around a Ray-free
training loop), each eval period delivered to the trial's MLflow run exactly once (by the trial,
or by the driver for a trial that ended first: leftovers.py), and the checkpoints it goes on from."""
from sweeper.trial.trainable import run_trial

__all__ = ["run_trial"]
