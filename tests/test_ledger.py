"""A trial's ledger (sweeper.trial.ledger): the best so far, the compute spent and the compute of
training alone, carried across a pause in the checkpoint it resumes from."""
import time

import pytest

from sweeper.trial.ledger import Ledger


def test_training_compute_sums_the_periods_training_seconds_times_the_devices_held(tmp_path):
    started = time.monotonic()
    ledger = Ledger("fid", "min", held=2, since=started)
    first = ledger.add({"fid": 30.0, "train_s": 1.5})
    second = ledger.add({"fid": 40.0, "train_s": 0.5})
    assert (first["train_compute_s"], second["train_compute_s"]) == (3.0, 4.0)
    assert (first["fid_best"], second["fid_best"]) == (30.0, 30.0)
    # compute_s is wall time since the start x devices, whatever the trainable says it trained.
    assert 0 <= second["compute_s"] <= (time.monotonic() - started) * 2
    ledger.save_in(tmp_path)

    resumed = Ledger("fid", "min", held=2, restore_from=str(tmp_path)).add({"fid": 20.0, "train_s": 1.0})
    assert resumed["train_compute_s"] == 6.0 and resumed["fid_best"] == 20.0
    assert resumed["compute_s"] >= second["compute_s"]


def test_a_trainable_that_reports_no_training_seconds_has_no_training_compute(tmp_path):
    ledger = Ledger("loss", "max", held=1)
    assert "train_compute_s" not in ledger.add({"loss": 1.0})
    assert ledger.add({"loss": float("nan"), "diverged": 1.0})["loss_best"] == pytest.approx(-float("inf"))
