"""The README's quick start, end to end: a real Ray Tune sweep with Optuna and ASHA, real GAN
training on toy-faces, real FID, everything landing in a real MLflow sqlite store."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("quick_sweep")
    env = {**os.environ, "SWEEPER_OFFLINE": "1", "SWEEPER_CACHE": str(workdir / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "sweeper", "run", str(REPO / "search_spaces" / "wgangp.py"), "--quick"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    client = MlflowClient(f"sqlite:///{workdir / 'sweeps' / 'mlflow.db'}")
    return result, client


def test_prints_the_best_trial_and_how_to_open_the_ui(quick_sweep):
    result, _ = quick_sweep
    assert "best trial:" in result.stdout and "fid" in result.stdout
    assert "python -m sweeper ui" in result.stdout and "mlflow.db" in result.stdout


def _runs(client):
    experiment = client.get_experiment_by_name("wgangp")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_mlflow_holds_a_parent_run_and_nested_trial_runs(quick_sweep):
    _, client = quick_sweep
    parents, children = _runs(client)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) >= 4
    extractor = parents[0].data.tags["sweeper.fid_extractor"]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.data.tags["sweeper.fid_extractor"] == extractor
        assert child.info.status == "FINISHED"
        assert {"g_lr", "d_lr", "optimizer", "z_dim", "d_norm", "g_norm", "loss"} <= set(child.data.params)
        fids = client.get_metric_history(child.info.run_id, "fid")
        assert [m.step for m in fids] == list(range(1, len(fids) + 1))  # step = eval period
        assert [m.step for m in client.get_metric_history(child.info.run_id, "kid")] == [m.step for m in fids]
        grids = [a.path for a in client.list_artifacts(child.info.run_id, "grids")]
        assert len(grids) == len(fids) and all(g.endswith(".png") for g in grids)


def test_asha_stops_some_trials_early(quick_sweep):
    _, client = quick_sweep
    _, children = _runs(client)
    outcomes = [c.data.tags["sweeper.outcome"] for c in children]
    assert "stopped-early" in outcomes and "completed" in outcomes, outcomes
    evals = {len(client.get_metric_history(c.info.run_id, "fid")) for c in children}
    assert len(evals) > 1  # trials ran for different numbers of eval periods


def test_best_alias_points_at_the_lowest_fid_trial(quick_sweep):
    _, client = quick_sweep
    _, children = _runs(client)
    best_fid = {c.info.run_id: min(m.value for m in client.get_metric_history(c.info.run_id, "fid"))
                for c in children}
    version = client.get_model_version_by_alias("wgangp-generator", "best")
    assert version.run_id == min(best_fid, key=best_fid.get)


def test_registered_generator_loads_and_generates_any_batch(quick_sweep):
    import mlflow
    import torch

    _, client = quick_sweep
    mlflow.set_tracking_uri(client._tracking_client.tracking_uri)
    G = mlflow.pytorch.load_model("models:/wgangp-generator@best")
    z_dim = int(client.get_run(client.get_model_version_by_alias("wgangp-generator", "best").run_id).data.params["z_dim"])
    with torch.no_grad():
        images = G(torch.randn(5, z_dim))
    assert images.shape == (5, 3, 32, 32) and images.abs().max() <= 1


def test_parent_run_reports_the_gain_over_the_hand_tuned_warm_starts(quick_sweep):
    result, client = quick_sweep
    parents, children = _runs(client)
    # The warm starts (seed 000 and seed 004's WGAN-GP) ran as trials with exactly their values.
    warm = [c for c in children if c.data.params["g_lr"] == "8e-05" and c.data.params["z_dim"] == "200"
            and c.data.params["d_norm"] == "instance"]
    warm += [c for c in children if c.data.params["beta1"] == "0.0" and c.data.params["d_norm"] == "none"
             and c.data.params["z_dim"] == "128"]
    assert len(warm) == 2
    best = {c.info.run_id: min(m.value for m in client.get_metric_history(c.info.run_id, "fid")) for c in children}
    metrics = parents[0].data.metrics
    assert metrics["baseline_fid"] == pytest.approx(min(best[c.info.run_id] for c in warm))
    assert metrics["fid_gain_over_baseline"] == pytest.approx(metrics["baseline_fid"] - min(best.values()))
    assert metrics["fid_gain_over_baseline"] >= 0
    assert "hand-tuned baseline (warm start)" in result.stdout
