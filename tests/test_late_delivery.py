"""Trials that end while the tracking server is down (a real `mlflow server`, stopped and started
again by PID) lose no eval period and log none twice: stopped by ASHA (at a rung, or at max_t
before the trainable returns) or failing (ASHA sweep), paused by the promotion scheduler and never
resumed (promotion sweep). Their processes end inside
`tune.report` or with an error, so they cannot deliver what they spooled; the driver delivers it
after the sweep's trials have ended and prints a line per trial. A tiny trainable, not a GAN."""
import os
import re
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import free_port, start_server, stop_server, wait_until_up
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # a real sweep per scheduler, with an outage: about a minute each

NUM_SAMPLES, NUM_EVALS, OUTAGE_S = 4, 6, 8
SPACE = '''
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from sweeper import ASHA, Promotion, Resources, Sweep
from trainables.config import Config

GATE = Path({gate!r})  # made by the test once the server is down


@dataclass(frozen=True)
class Toy(Config):
    x: float = 0.0
    num_evals: int = {num_evals}
    seed: int = 0


def loss(x, period):
    return (x - 3) ** 2 + 1 / period


def fit(cfg, report, restore_from=None):
    done = json.loads((Path(restore_from) / "toy.json").read_text())["period"] if restore_from else 0
    for period in range(done + 1, cfg.num_evals + 1):
        if period == 2:
            while not GATE.exists():
                time.sleep(0.1)
            # The better a trial, the sooner it reaches the first rung: ASHA then stops the later ones.
            time.sleep(0.02 * min(loss(cfg.x, 1), 150))
        if cfg.x == -9.5 and period == 4:  # the second warm start
            raise RuntimeError("a trial that fails while MLflow is down")
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "toy.json").write_text(json.dumps({{"period": period}}))
            report({{"eval_period": period, "loss": loss(cfg.x, period)}}, folder)


sweep = Sweep("late", Toy(), trainable=fit, metric="loss", mode="min", space={{"x": tune.uniform(-10, 10)}},
              warm_start=[{{"x": 3.0}}, {{"x": -9.5}}], warm_neighbours=(), num_samples={num_samples},
              max_failures=0, max_concurrent={num_samples}, resources=Resources(cpus=0.25),
              scheduler={scheduler})
'''
SCHEDULERS = {"asha": "ASHA(grace_period=2, reduction_factor=2)",
              "promotion": "Promotion(reduction_factor=2, first_rung=2)"}
LATE = re.compile(r"^trial (\w+): (\d+) eval period\(s\) it could not deliver before it ended delivered late", re.M)


def _children(client):
    experiment = client.get_experiment_by_name("late")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string="tags.`mlflow.parentRunId` != ''")


@pytest.fixture(scope="module", params=sorted(SCHEDULERS))
def late_sweep(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"late_{request.param}")
    gate = root / "gate"
    (root / "space.py").write_text(SPACE.format(gate=str(gate), num_evals=NUM_EVALS, num_samples=NUM_SAMPLES,
                                                scheduler=SCHEDULERS[request.param]))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server, sweep = start_server(root, port), None
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("RAY_ADDRESS", None)
    try:
        wait_until_up(f"{uri}/health", server, root / "server.log")
        client = MlflowClient(uri)
        with (root / "sweep.log").open("w") as log:
            sweep = subprocess.Popen([sys.executable, "-m", "sweeper", "run", "space.py", "--storage",
                                      str(root / "storage")], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 300
            # Every trial has its run and delivered its first period; then the server goes down.
            while sum(bool(client.get_metric_history(c.info.run_id, "loss")) for c in _children(client)) < NUM_SAMPLES:
                assert sweep.poll() is None and time.monotonic() < deadline, (root / "sweep.log").read_text()[-3000:]
                time.sleep(0.5)
            stop_server(server)
            gate.touch()
            time.sleep(OUTAGE_S)
            server = start_server(root, port)
            wait_until_up(f"{uri}/health", server, root / "server.log")
            code = sweep.wait(timeout=300)
        output = (root / "sweep.log").read_text()
        assert code == 0, output[-5000:]
        yield client, root, request.param, output
    finally:
        if sweep is not None and sweep.poll() is None:
            sweep.terminate()
            sweep.wait(timeout=60)
        if server.poll() is None:
            stop_server(server)


def _tune_results(root) -> dict[str, pd.DataFrame]:
    (experiment,) = (root / "storage").glob("late-*")
    return {p.parent.name: pd.read_csv(p) for p in experiment.glob("*/progress.csv")}


def test_every_reported_period_is_in_its_run_exactly_once(late_sweep):
    client, root, _, _ = late_sweep
    results, children = _tune_results(root), _children(client)
    assert len(children) == len(results) == NUM_SAMPLES
    for child in children:
        rows = results[child.data.tags["sweeper.trial_id"]]
        assert rows["eval_period"].is_unique  # each period ran once: Tune's value is the reference
        periods = sorted(rows["eval_period"].astype(int))
        for key in ("loss", "eval_period", "loss_best", "compute_s"):
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
            assert steps == periods, (key, steps, periods)  # 0 lost, 0 duplicated
        logged = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "loss")}
        assert logged == {int(p): pytest.approx(v) for p, v in zip(rows["eval_period"], rows["loss"])}


def test_the_driver_delivered_what_ended_trials_left_and_said_so_once_per_trial(late_sweep):
    client, root, scheduler, output = late_sweep
    results = _tune_results(root)
    late = dict((trial_id, int(n)) for trial_id, n in LATE.findall(output))
    assert late, output[-3000:]
    assert len(late) == len(LATE.findall(output))  # one line per trial
    # Only periods reported after the first (all of them during the outage) can be late.
    assert all(1 <= n <= len(results[t]) - 1 for t, n in late.items()), (late, output[-3000:])
    runs = {c.data.tags["sweeper.trial_id"]: c for c in _children(client)}
    assert all(c.info.status != "RUNNING" for c in runs.values())
    if scheduler == "asha":
        # No ASHA trial outlives the outage, and each ends inside tune.report or failing, even one
        # that reaches its last period (ASHA stops it at max_t before its trainable returns): every
        # period it reported after the first is delivered late.
        assert late == {t: len(rows) - 1 for t, rows in results.items()}, output[-3000:]
        (failed,) = [t for t, c in runs.items() if c.data.tags["sweeper.outcome"] == "error"]
        assert sorted(results[failed]["eval_period"]) == [1, 2, 3]  # periods 2 and 3 reported in the outage
        assert any(runs[t].data.tags["sweeper.outcome"] == "stopped-early" for t in late)
