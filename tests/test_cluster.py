"""Local and cluster are one code path: the same `python -m sweeper run` submitted to a Ray cluster
(two nodes on this machine, `ray.cluster_utils.Cluster`) with `RAY_ADDRESS` and
`MLFLOW_TRACKING_URI` pointing at a real `mlflow server` on 127.0.0.1; trials log over HTTP."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, one_cpu_nodes, start_server, stop_server, wait_until_up
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
NAME = "cluster"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # One CPU per node and one per trial (Resources.cpus): two trials can only run at once on
    # two different nodes. The driver holds no CPU resource, so it takes none from the trials, and
    # Tune (one pending trial at a time with a searcher) places the second trial while the first
    # holds its CPU for the whole of its training.
    with one_cpu_nodes(tmp_path_factory.getbasetemp() / "cache", workers=1) as (cluster, _):
        yield cluster


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` with its own sqlite store; it stores the artifacts it is sent."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = root / "server.log"
    server = start_server(root, port)
    try:
        # Not waited for here: it starts (10-20 s on 2 busy cores) while the cluster does.
        yield f"http://127.0.0.1:{port}", root / "artifacts", server, log
    finally:
        stop_server(server, timeout_s=30)


@pytest.fixture(scope="module")
def cluster_sweep(mlflow_server, cluster, tmp_path_factory):
    uri, artifacts, server, log = mlflow_server
    wait_until_up(f"{uri}/health", server, log)
    workdir = tmp_path_factory.mktemp("cluster_sweep")
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": uri, "SWEEPER_OFFLINE": "1",
           "SWEEPER_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}
    # The --quick sweep with two trials and an even smaller budget: what is tested is where things run and land.
    budget = ["num_evals=2", "steps_per_eval=5", "fid_samples=64", "ref_samples=64", "final_fid_samples=64"]
    # A path both nodes see stands in for NFS here (the S3 path is issue 10's multi-node test).
    storage = tmp_path_factory.mktemp("shared_storage")
    result = subprocess.run(
        [sys.executable, "-m", "sweeper", "run", str(REPO / "search_spaces" / "wgangp.py"), "--quick",
         "--num-samples", "2", *(arg for kv in budget for arg in ("--set", kv)), "--name", NAME,
         "--storage", str(storage)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    node_ids = {node.node_id for node in cluster.list_all_nodes()}
    return MlflowClient(tracking_uri=uri), workdir, artifacts, node_ids, storage


def test_the_sweep_logs_over_http_to_the_mlflow_server(cluster_sweep):
    client, workdir, artifacts, _, storage = cluster_sweep
    experiment = client.get_experiment_by_name(NAME)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # served by the server
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        fids = client.get_metric_history(child.info.run_id, "fid")
        assert [m.step for m in fids] == list(range(1, len(fids) + 1)) and fids
        grids = [a.path for a in client.list_artifacts(child.info.run_id, "grids")]  # listed over HTTP
        assert len(grids) == len(fids) and all(g.endswith(".png") for g in grids)
    assert list(artifacts.rglob("eval_0001.png"))  # uploaded through the server into its store
    version = client.get_model_version_by_alias(f"{NAME}-quick-generator", "best")
    assert version.run_id in {c.info.run_id for c in children}
    assert {"trials.parquet", "summary.json"} <= {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    # Nothing went to the local store the driver uses when MLFLOW_TRACKING_URI is unset.
    assert not (workdir / "sweeps" / "mlflow.db").exists()
    assert not (workdir / "sweeps" / "mlartifacts").exists()
    # Checkpoints went to the given storage, none to the driver's local default.
    assert list(storage.rglob("checkpoint.pt")) and not (workdir / "sweeps" / "ray_results").exists()


def test_the_trials_ran_on_both_nodes(cluster_sweep):
    client, _, _, node_ids, _ = cluster_sweep
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id])
    ran_on = [r.data.tags["sweeper.node_id"] for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(ran_on) == 2 and set(ran_on) == node_ids, (ran_on, node_ids)


@pytest.mark.parametrize("args, env, message", [
    ([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"},
     "sweeper: error: storage: joining the Ray cluster at RAY_ADDRESS=127.0.0.1:6379 needs storage every node "
     "reaches for checkpoints: pass --storage s3://<bucket>/sweeps"),
    (["--storage", "s3://bucket/sweeps"], {},
     "sweeper: error: MLFLOW_TRACKING_URI: the cluster's trials cannot reach the local store sqlite:///"),
])
def test_a_cluster_with_local_defaults_is_refused_before_anything_starts(tmp_path, args, env, message):
    environment = {**os.environ, "RAY_ADDRESS": "127.0.0.1:6379", **env}  # nothing listens there: never joined
    environment.pop("SWEEPER_STORAGE", None)
    if "MLFLOW_TRACKING_URI" not in env:
        environment.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([sys.executable, "-m", "sweeper", "run", str(REPO / "search_spaces" / "wgangp.py"),
                             "--quick", *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(message), result.stderr
    assert list(tmp_path.iterdir()) == []
