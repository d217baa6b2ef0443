"""`--quick` sweeps on the real photos in ../shared/data (skipped with a reason when absent):
AFHQ cats at 32 px, and the cat class of the CIFAR-10 cats+dogs folder (train split)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import shared_data

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("folder, suffix, count", [("afhq-cat-128", "", 5153), ("cifar10-catdog", ":cat", 5000)])
def test_quick_sweep_on_real_photos(tmp_path, folder, suffix, count):
    data = f"{shared_data(folder)}{suffix}"
    # Two trials of two eval periods: this tests the data path, test_sweep_e2e the search.
    result = subprocess.run(
        [sys.executable, "-m", "sweeper", "run", str(REPO / "search_spaces" / "wgangp.py"), "--quick",
         "--data", data, "--num-samples", "2", "--set", "num_evals=2", "--name", "real",
         # The standard Inception (fid_final) runs at ~9 img/s here: few samples, the data path is the point.
         "--set", "ref_samples=128", "--set", "final_fid_samples=64"],
        cwd=tmp_path, env={**os.environ, "SWEEPER_OFFLINE": "1"}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{count} images at 32x32" in result.stdout and "best trial:" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("real")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FINISHED" and parent.data.params["data"] == data
    assert len(runs) == 3
