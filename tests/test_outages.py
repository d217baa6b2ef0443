"""A sweep on a three-node Ray cluster (`ray.cluster_utils.Cluster`) logging to a real `mlflow
server` survives, in one run: a node removed mid-sweep (its trial is rescheduled on another and
goes on from its checkpoint) and the tracking server stopped for 30 s and started again on the
same store (trials keep training, spool their eval periods and deliver them later). Every metric
Tune recorded is in MLflow exactly once."""
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import free_port, one_cpu_nodes, start_server, stop_server, wait_until_up
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # real sweeps (killed, resumed, failing): minutes

NUM_SAMPLES, NUM_EVALS, OUTAGE_S = 3, 30, 30
SPACE = f'''
from ray import tune

from sweeper import Sweep
from trainables.config import GANConfig

sweep = Sweep(
    name="outages",
    config=GANConfig(data="toy-faces", loss="bce", resolution=32, g_width=8, d_width=8, batch_size=16,
                     steps_per_eval=10, num_evals={NUM_EVALS}, fid_samples=64, ref_samples=64,
                     final_fid_samples=64, eval_extractor="proxy"),
    space={{"g_lr": tune.loguniform(1e-4, 1e-3)}},
    num_samples={NUM_SAMPLES}, scheduler=None, max_concurrent={NUM_SAMPLES},
)
'''


def _fid_counts(client, name) -> list[int]:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`mlflow.parentRunId` != ''")
    return [len(client.get_metric_history(r.info.run_id, "fid")) for r in runs]


@pytest.fixture(scope="module")
def outage_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("outages")
    (root / "space.py").write_text(SPACE)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(root, port)
    with one_cpu_nodes(tmp_path_factory.getbasetemp() / "cache", workers=2) as (cluster, workers):
        try:
            wait_until_up(f"{uri}/health", server, root / "server.log")
            client = MlflowClient(uri)
            sweep_env = {**os.environ, "RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": uri}
            with (root / "sweep.log").open("w") as log:
                sweep = subprocess.Popen(
                    [sys.executable, "-m", "sweeper", "run", "space.py", "--storage", str(root / "storage")],
                    cwd=root, env=sweep_env, stdout=log, stderr=subprocess.STDOUT)
                deadline = time.monotonic() + 300
                while not (len(counts := _fid_counts(client, "outages")) == NUM_SAMPLES and min(counts) >= 2):
                    assert sweep.poll() is None and time.monotonic() < deadline, (root / "sweep.log").read_text()[-3000:]
                    time.sleep(1)
                cluster.remove_node(workers[0])  # one of the three trials loses its machine
                removed = workers[0].node_id
                stop_server(server)
                outage = (time.time(), time.time() + OUTAGE_S)
                time.sleep(OUTAGE_S)
                server = start_server(root, port)
                wait_until_up(f"{uri}/health", server, root / "server.log")
                code = sweep.wait(timeout=600)
            assert code == 0, (root / "sweep.log").read_text()[-5000:]
            surviving = {node.node_id for node in cluster.list_all_nodes()}
            yield client, root, removed, surviving, outage
        finally:
            stop_server(server)


def _trials(client):
    runs = client.search_runs([client.get_experiment_by_name("outages").experiment_id])
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _tune_results(root) -> dict[str, pd.DataFrame]:
    (experiment,) = (root / "storage").glob("outages-*")
    return {p.parent.name: pd.read_csv(p) for p in experiment.glob("*/progress.csv")}


def test_no_metric_lost_or_duplicated_through_the_outage(outage_sweep):
    client, root, _, _, (down, up) = outage_sweep
    results = _tune_results(root)
    assert len(results) == NUM_SAMPLES
    # The trials trained on while the server was down.
    assert any(((rows["timestamp"] > down) & (rows["timestamp"] < up)).any() for rows in results.values())
    children = _trials(client)
    assert len(children) == NUM_SAMPLES
    for child in children:
        rows = results[child.data.tags["sweeper.trial_id"]]
        periods = sorted(set(rows["eval_period"].astype(int)))
        assert periods == list(range(1, NUM_EVALS + 1))
        for key in ("fid", "kid", "kimg", "loss_g", "loss_d", "eval_period"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert sorted(steps) == periods, (key, steps)  # 0 lost, 0 duplicated
        # Each period's value is the one Tune recorded (where a period ran once; around the node's
        # loss one may have run twice, and MLflow keeps the first).
        logged = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "fid")}
        runs_of = rows["eval_period"].value_counts()
        for period, value in rows.groupby("eval_period")["fid"].last().items():
            if runs_of[period] == 1:
                assert logged[int(period)] == pytest.approx(value, rel=1e-6), period
        grids = [a.path for a in client.list_artifacts(child.info.run_id, "grids")]
        assert len(grids) == NUM_EVALS


def test_the_trial_on_the_removed_node_was_rescheduled_and_the_sweep_completed(outage_sweep):
    client, root, removed, surviving, _ = outage_sweep
    (experiment,) = (root / "storage").glob("outages-*")
    state = json.loads(sorted(experiment.glob("experiment_state-*.json"))[-1].read_text())
    failures = {json.loads(trial)["trial_id"]: json.loads(runtime)["num_failures"]
                for trial, runtime in state["trial_data"]}
    assert sum(failures.values()) >= 1, failures  # the trial whose node went away
    children = _trials(client)
    assert all(c.data.tags["sweeper.outcome"] == "completed" for c in children)
    assert all(c.data.tags["sweeper.node_id"] in surviving for c in children) and removed not in surviving
    parent = [r for r in client.search_runs([client.get_experiment_by_name("outages").experiment_id])
              if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert client.get_model_version_by_alias("outages-generator", "best")
