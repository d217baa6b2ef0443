"""The real photos in ../shared/data (skipped with a reason when absent) as a sweep gets them: AFHQ
cats at 32 px, and the cat class of the CIFAR-10 cats+dogs folder (train split).

What a sweep does with `--data` is checked step by step, in-process: the search-space file resolved
with `--quick --data SRC`, the Task's check and its once-per-sweep preparation (the summary line it
prints), the prepared uint8 array, and real training on it from the sweep's own first trial
configuration. The search itself is data-independent and covered by test_sweep_e2e.py; one small
real sweep on the photos, through the command line, is kept under the `slow` marker."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from mlflow.tracking import MlflowClient

from sweeper.driver.loader import load_sweep
from sweeper.kinds import kind_of
from sweeper.kinds.refstats import reference_stats
from trainables.metrics import RandomConvFeatures
from trainables.training.gan import train_gan

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "wgangp.py"


@pytest.mark.parametrize("folder, suffix, count, classes", [
    pytest.param("afhq-cat-128", "", 5153, ("cat",), id="afhq-cat"),
    pytest.param("cifar10-catdog", ":cat", 5000, ("cat", "dog"), id="cifar10-cat")])
def test_a_sweep_prepares_real_photos_and_trains_on_them(folder, suffix, count, classes, capsys):
    data = f"{shared_data(folder)}{suffix}"
    sweep = load_sweep(SPACE).resolve(quick=True, data=data, name="real")
    assert sweep.config.data == data and sweep.config.resolution == 32  # the parent run's `data` param
    kind_of(sweep.config).check(sweep)
    prepared = kind_of(sweep.config).prepare(sweep)  # what run_sweep does once, before Ray starts
    assert f"{count} images at 32x32" in capsys.readouterr().out

    dataset = prepared.data
    assert dataset.images.dtype == np.uint8 and dataset.images.shape == (count, 3, 32, 32)
    assert dataset.classes == classes and (dataset.labels == classes.index("cat")).all()  # `:cat` selects
    assert not dataset.images.flags.writeable  # the read-only view trials get, as from Ray's object store
    # Photos, not a blank or constant array: the pixels span the range and the images differ.
    assert dataset.images.min() < 20 and dataset.images.max() > 235
    assert len({dataset.images[i].tobytes() for i in range(0, count, count // 50)}) > 45

    # The sweep's first trial (its warm start) trains on them, shrunk to two steps.
    cfg = sweep.trial_config(sweep.warm_start_params(0)).replace(
        steps_per_eval=2, num_evals=1, batch_size=16, fid_samples=64, ref_samples=128, device="cpu")
    extractor = RandomConvFeatures(seed=0)
    ref = reference_stats(dataset.images, dataset.fingerprint, extractor, cfg.ref_samples)
    reports = []
    metrics = train_gan(cfg, lambda m, d: reports.append(m), images=dataset.images, extractor=extractor,
                        ref_stats=ref)
    assert len(reports) == 1 and metrics["diverged"] == 0.0
    assert np.isfinite(metrics["fid"]) and metrics["fid"] > 0

    # Prepared once: a second preparation (another trial, another sweep) reads the same cached array.
    again = kind_of(sweep.config).prepare(sweep)
    assert again.key == prepared.key and again.data.fingerprint == dataset.fingerprint


@pytest.mark.slow
def test_quick_sweep_on_real_photos_through_the_command(tmp_path):
    data = f"{shared_data('cifar10-catdog')}:cat"
    # Two trials (the warm starts) of one short eval period, and few samples for the standard
    # Inception (~9 img/s here): the data path through Ray and MLflow is the point.
    result = subprocess.run(
        [sys.executable, "-m", "sweeper", "run", str(SPACE), "--quick", "--data", data, "--num-samples", "2",
         "--set", "num_evals=1", "--set", "steps_per_eval=5", "--set", "fid_samples=64",
         "--set", "ref_samples=64", "--set", "final_fid_samples=32", "--name", "real"],
        cwd=tmp_path, env={**os.environ, "SWEEPER_OFFLINE": "1"}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5000 images at 32x32" in result.stdout and "best trial:" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("real").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FINISHED" and parent.data.params["data"] == data
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all(c.info.status == "FINISHED" and c.data.params["data"] == data
                                      for c in children)
