"""What a trial's MLflow run holds: only the params that apply to it, with the device and precision
that ran, and only finite metrics (a diverged period says so instead of logging inf)."""
import math

import pytest
import torch

from sweeper.kinds import kind_of
from sweeper.tracking.runs import open_sweep, trial_run_id
from sweeper.trial.delivery import _loggable
from trainables.config import GANConfig


def test_optimizer_loss_and_schedule_knobs_are_logged_only_where_they_apply():
    params = kind_of(GANConfig()).run_params(GANConfig(optimizer="rmsprop", loss="hinge", lr_schedule="cosine"))
    assert not {"beta1", "beta2", "gp_weight", "lr_gamma", "label_smoothing", "ema_start_kimg"} & set(params)
    assert params["momentum"] == 0.0 and params["optimizer"] == "rmsprop"
    adam = kind_of(GANConfig()).run_params(GANConfig(optimizer="adam", loss="wgan-gp", lr_schedule="step",
                                                      ema_decay=0.999))
    assert {"beta1", "beta2", "gp_weight", "lr_gamma", "ema_start_kimg"} <= set(adam) and "momentum" not in adam


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    # A real MLflow sqlite store: the params checked are the ones a trial's run really holds.
    monkeypatch.chdir(tmp_path)  # open_sweep's local artifact root
    return open_sweep("logged", f"sqlite:///{tmp_path / 'mlflow.db'}", params={}, tags={})


def _logged_params(tracking, cfg) -> dict:
    # What a GAN trial does first (sweeper.trial.trainable._open_run_log): its run, with the params
    # its kind resolves in the trial's process; read back from the store as MLflow keeps them.
    run_id = trial_run_id(tracking, "t0001", "trial_t0001", kind_of(cfg).run_params(cfg))
    return tracking.client().get_run(run_id).data.params


# (machine has CUDA, device asked, mixed_precision asked) -> (device, mixed_precision) that run, by
# hand: "auto" takes the GPU when there is one; bf16 autocast runs only on CUDA.
RAN = [
    (False, "auto", True, "cpu", "False"),
    (False, "cpu", True, "cpu", "False"),
    (True, "auto", True, "cuda", "True"),
    (True, "auto", False, "cuda", "False"),
    (True, "cpu", True, "cpu", "False"),
    (True, "cuda", True, "cuda", "True"),
]


@pytest.mark.parametrize(("has_cuda", "device", "mixed", "ran_on", "ran_mixed"), RAN)
def test_the_device_and_precision_logged_are_the_ones_that_ran(tracking, monkeypatch, has_cuda, device, mixed,
                                                              ran_on, ran_mixed):
    # The machine is torch's answer to "is there a GPU?", set here (run_params touches no GPU), so
    # both kinds of machine are checked on any; the expected values are the table's, not a formula.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_cuda)
    params = _logged_params(tracking, GANConfig(device=device, mixed_precision=mixed))
    assert (params["device"], params["mixed_precision"]) == (ran_on, ran_mixed)


def test_auto_logs_the_cpu_on_a_machine_without_a_gpu(tracking):
    # This machine as it is, with no stand-in: where no CUDA device exists, a trial runs on the CPU
    # in fp32, and its run says so.
    if torch.cuda.device_count() > 0:
        pytest.skip("this machine has a GPU (the table above checks auto on one)")
    params = _logged_params(tracking, GANConfig(device="auto", mixed_precision=True))
    assert (params["device"], params["mixed_precision"]) == ("cpu", "False")


def test_a_diverged_period_logs_no_infinity_but_where_it_diverged():
    logged = _loggable({"eval_period": 3, "fid": math.inf, "kid": math.nan, "kimg": 1.5, "diverged": 1.0})
    assert logged == {"eval_period": 3, "kimg": 1.5, "diverged": 1.0, "diverged_at_period": 3}
    assert _loggable({"eval_period": 2, "fid": 80.0}) == {"eval_period": 2, "fid": 80.0}
