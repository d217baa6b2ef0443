"""What runs in a Ray worker for one trial: the function Tune calls (`run_trial`, around a Ray-free
training loop), each eval period delivered to the trial's MLflow run exactly once, and the
checkpoints it goes on from."""
from sweeper.trial.trainable import run_trial

__all__ = ["run_trial"]
