"""What a trial's MLflow run holds: only the params that apply to it, with the device and precision
that ran, and only finite metrics (a diverged period says so instead of logging inf)."""
import math

from sweeper.kinds import kind_of
from sweeper.trial.delivery import _loggable
from trainables.config import GANConfig


def test_optimizer_loss_and_schedule_knobs_are_logged_only_where_they_apply():
    params = kind_of(GANConfig()).run_params(GANConfig(optimizer="rmsprop", loss="hinge", lr_schedule="cosine"))
    assert not {"beta1", "beta2", "gp_weight", "lr_gamma", "label_smoothing", "ema_start_kimg"} & set(params)
    assert params["momentum"] == 0.0 and params["optimizer"] == "rmsprop"
    adam = kind_of(GANConfig()).run_params(GANConfig(optimizer="adam", loss="wgan-gp", lr_schedule="step",
                                                      ema_decay=0.999))
    assert {"beta1", "beta2", "gp_weight", "lr_gamma", "ema_start_kimg"} <= set(adam) and "momentum" not in adam


def test_the_device_and_precision_logged_are_the_ones_that_ran():
    params = kind_of(GANConfig()).run_params(GANConfig(device="auto", mixed_precision=True))
    import torch
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert params["device"] == expected and params["mixed_precision"] == (expected == "cuda")


def test_a_diverged_period_logs_no_infinity_but_where_it_diverged():
    logged = _loggable({"eval_period": 3, "fid": math.inf, "kid": math.nan, "kimg": 1.5, "diverged": 1.0})
    assert logged == {"eval_period": 3, "kimg": 1.5, "diverged": 1.0, "diverged_at_period": 3}
    assert _loggable({"eval_period": 2, "fid": 80.0}) == {"eval_period": 2, "fid": 80.0}
