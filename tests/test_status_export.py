"""`sweeper status` and `sweeper export` read back a real sweep's MLflow record: a small sweep of a
trainable defined in its own search-space file, run by `python -m sweeper run`, watched while its
first trials wait on a gate file, then read finished, through the sqlite store and an `mlflow server`."""
import contextlib
import io
import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import free_port, wait_until_up
from mlflow.tracking import MlflowClient

from sweeper.cli import main
from trainables.config import GANConfig

# A maximised metric that is not fid: nothing in status or export may assume fid (min).
SPACE = '''
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from sweeper import Sweep
from trainables.config import Config

GATE = Path({gate!r})


@dataclass(frozen=True)
class Toy(Config):
    x: float = 0.0
    width: int = 2
    flag: bool = True
    label: str = "toy"
    num_evals: int = 3
    seed: int = 0


def fit(cfg, report, restore_from=None):
    for period in range(1, cfg.num_evals + 1):
        report({{"eval_period": period, "score": -(cfg.x - 3) ** 2 + period / cfg.width,
                 "loss": abs(cfg.x) * period}}, None)
        deadline = time.monotonic() + 120
        while not GATE.exists() and time.monotonic() < deadline:  # the test looks at the sweep here
            time.sleep(0.05)


sweep = Sweep("toy", Toy(), trainable=fit, metric="score", mode="max",
              space={{"x": tune.uniform(-5, 5), "width": tune.choice([1, 2, 4])}},
              warm_start=[{{"x": 0.0, "width": 2}}], num_samples=4, max_concurrent=2)
'''
NAME, METRIC, TRIALS = "toy", "score", 4


def _env(cache) -> dict:
    env = {**os.environ, "SWEEPER_OFFLINE": "1", "SWEEPER_CACHE": str(cache)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the sweep's own store, sweeps/mlflow.db in its folder
    return env


def _sweeper(uri: str, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m sweeper ARGS` on the store at `uri`, in this
    process (a second Python would spend most of its time importing MLflow on two busy cores)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        env.setenv("MLFLOW_TRACKING_URI", uri)
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _children(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(NAME)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


def _wait(condition, process, log, what: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the sweep ended before {what}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The finished sweep: its directory, sqlite URI, an `mlflow server` on the same store, and
    what `status` printed (and MLflow held) while its first trials waited at the gate."""
    root = tmp_path_factory.mktemp("status_export")
    gate = root / "gate"
    (root / "toy.py").write_text(SPACE.format(gate=str(gate)))
    uri = f"sqlite:///{root / 'sweeps' / 'mlflow.db'}"
    env = _env(tmp_path_factory.getbasetemp() / "cache")
    log, server_log = root / "sweep.log", root / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "sweeper", "run", "toy.py"], cwd=root, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    server = None
    try:
        # The store is read only once the sweep has made it (its state file is written after the parent run).
        _wait(lambda: any(root.glob("sweeps/ray_results/*/sweeper.json")), process, log, "the sweep's parent run")
        client = MlflowClient(uri)
        # Two trials run at once; each waits at the gate after logging its first period.
        _wait(lambda: sum("eval_period" in r.data.metrics for r in _children(client)) >= 2, process, log,
              "two logged periods")
        running = _sweeper(uri, "status", NAME)
        at_gate = {r.data.tags["sweeper.trial_id"]: r for r in _children(client)}
        port = free_port()
        with server_log.open("wb") as out:  # started now, so that it is up by the time a test needs it
            server = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1", "--backend-store-uri", uri], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        gate.touch()
        assert process.wait(timeout=180) == 0, log.read_text()[-3000:]
        yield {"uri": uri, "http": f"http://127.0.0.1:{port}", "server": server, "server_log": server_log,
               "running": running, "at_gate": at_gate}
    finally:
        gate.touch()
        if process.poll() is None:
            process.kill()
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def _table(output: str) -> list[dict]:
    """The trial rows of `status NAME`: the header line, a blank line, then the aligned table."""
    lines = output.splitlines()
    rows = [line.split() for line in lines[2:] if line and not line.startswith("winner:")]
    return [dict(zip(rows[0], row)) for row in rows[1:]]


def _history(client, run_id, key) -> dict:
    return {int(m.step): m.value for m in client.get_metric_history(run_id, key)}


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.5g}"


def test_status_while_the_sweep_runs_shows_running_trials_and_their_periods_so_far(sweep):
    code, out, err = sweep["running"]
    assert code == 0, err[-2000:]
    assert out.startswith(f"sweep {NAME}: RUNNING")
    rows = {row["trial"]: row for row in _table(out)}
    assert set(rows) == set(sweep["at_gate"])  # trials Tune has not started yet have no run
    for trial_id, run in sweep["at_gate"].items():
        assert rows[trial_id]["state"] == run.data.tags.get("sweeper.outcome", run.info.status)
        assert rows[trial_id]["periods"] == str(int(run.data.metrics.get("eval_period", 0)))
    running = [row for row in rows.values() if row["state"] == "RUNNING"]
    assert len(running) >= 2 and all(row["periods"] == "1" for row in running)  # both wait at the gate


def test_status_of_the_finished_sweep_is_what_mlflow_holds_best_first(sweep):
    code, out, err = _sweeper(sweep["uri"], "status", NAME)
    assert code == 0, err[-2000:]
    assert out.startswith(f"sweep {NAME}: completed")
    rows = _table(out)
    client = MlflowClient(sweep["uri"])
    children = {r.data.tags["sweeper.trial_id"]: r for r in _children(client)}
    assert len(rows) == len(children) == TRIALS
    for row in rows:
        run = children[row["trial"]]
        values = _history(client, run.info.run_id, METRIC)
        assert row["state"] == run.data.tags["sweeper.outcome"]
        assert row["periods"] == str(max(_history(client, run.info.run_id, "eval_period")))
        assert row[f"best_{METRIC}"] == _cell(max(values.values()))
        assert row[f"last_{METRIC}"] == _cell(values[max(values)])
        assert row["x"] == _cell(float(run.data.params["x"])) and row["width"] == run.data.params["width"]
    best = [max(_history(client, children[row["trial"]].info.run_id, METRIC).values()) for row in rows]
    assert best == sorted(best, reverse=True)  # mode max: the highest score first
    parent = client.get_run(children[rows[0]["trial"]].data.tags["mlflow.parentRunId"])
    assert out.rstrip().endswith(f"winner: trial {parent.data.tags['sweeper.best_trial']}")


def test_status_without_a_name_lists_the_sweep(sweep):
    code, out, err = _sweeper(sweep["uri"], "status")
    assert code == 0, err[-2000:]
    lines = out.splitlines()
    client = MlflowClient(sweep["uri"])
    best = max(v for r in _children(client) for v in _history(client, r.info.run_id, METRIC).values())
    assert lines[0].split() == ["sweep", "started", "state", "trials", "metric", "best", "final"]
    assert lines[1].split()[0] == NAME and lines[1].split()[3:] == ["completed", str(TRIALS), METRIC, "(max)",
                                                                    _cell(best), "-"]


def test_export_writes_one_typed_row_per_trial_with_mlflows_numbers(sweep, tmp_path):
    path = tmp_path / "trials.parquet"
    code, out, err = _sweeper(sweep["uri"], "export", NAME, "-o", str(path))
    assert code == 0 and f"wrote {TRIALS} rows" in out, err[-2000:]
    schema = pq.read_schema(path)
    for column, kind in {"trial_id": pa.string(), "run_id": pa.string(), "state": pa.string(),
                         "proposed_by": pa.string(), "eval_periods": pa.int64(), f"best_{METRIC}": pa.float64(),
                         f"last_{METRIC}": pa.float64(), "loss": pa.float64(), "params.x": pa.float64(),
                         "params.width": pa.int64(), "params.num_evals": pa.int64(), "params.flag": pa.bool_(),
                         "params.label": pa.string()}.items():
        assert schema.field(column).type == kind, column
    frame = pd.read_parquet(path)
    assert str(frame["params.width"].dtype) == "int64" and str(frame["params.flag"].dtype) == "bool"
    client = MlflowClient(sweep["uri"])
    children = {r.data.tags["sweeper.trial_id"]: r for r in _children(client)}
    assert sorted(frame["trial_id"]) == sorted(children)
    for _, row in frame.iterrows():
        run = children[row["trial_id"]]
        values = _history(client, run.info.run_id, METRIC)
        assert row["run_id"] == run.info.run_id and row["state"] == run.data.tags["sweeper.outcome"]
        assert row["proposed_by"] == run.data.tags["sweeper.proposed_by"]
        assert row["eval_periods"] == max(_history(client, run.info.run_id, "eval_period"))
        assert row[f"best_{METRIC}"] == max(values.values()) and row[f"last_{METRIC}"] == values[max(values)]
        assert row["loss"] == run.data.metrics["loss"]
        assert row["params.x"] == float(run.data.params["x"]) and row["params.width"] == int(run.data.params["width"])
        assert row["params.flag"] == (run.data.params["flag"] == "True") and row["params.label"] == "toy"


def test_export_steps_is_every_metric_history(sweep, tmp_path):
    path = tmp_path / "steps.parquet"
    code, _, err = _sweeper(sweep["uri"], "export", NAME, "--steps", "-o", str(path))
    assert code == 0, err[-2000:]
    table = pq.read_table(path)
    assert table.schema.field("eval_period").type == pa.int64()
    frame = table.to_pandas()
    # What the trainable reported, and what every trial reports beside it (sweeper.trial.ledger): the
    # sweep's objective (the best score so far), the device-seconds spent so far and its process's
    # peak memory (sweeper.trial.system); MLflow's system metrics, sampled by the clock, are not rows.
    keys = [METRIC, f"{METRIC}_best", "compute_s", "loss", "peak_rss_mib"]
    assert sorted(frame.columns) == sorted(["trial_id", "run_id", "eval_period", *keys])
    client = MlflowClient(sweep["uri"])
    expected = []
    for run in _children(client):
        histories = {k: _history(client, run.info.run_id, k) for k in ("eval_period", *keys)}
        steps = sorted(histories["eval_period"])
        assert [histories[f"{METRIC}_best"][s] for s in steps] == \
            [max(histories[METRIC][t] for t in steps[:i + 1]) for i in range(len(steps))]  # mode max
        spent = [histories["compute_s"][s] for s in steps]
        assert spent[0] > 0 and spent == sorted(spent), spent
        for step in steps:
            expected.append((run.data.tags["sweeper.trial_id"], run.info.run_id, step,
                             *(histories[k][step] for k in keys)))
    assert sorted(frame[["trial_id", "run_id", "eval_period", *keys]].itertuples(index=False, name=None)) \
        == sorted(expected)


def test_status_and_export_read_an_mlflow_server_as_they_read_the_local_store(sweep, tmp_path):
    wait_until_up(f"{sweep['http']}/health", sweep["server"], sweep["server_log"])
    local, remote = _sweeper(sweep["uri"], "status", NAME), _sweeper(sweep["http"], "status", NAME)
    assert remote[0] == 0, remote[2][-2000:]
    assert remote[1] == local[1]
    for uri, path in ((sweep["http"], tmp_path / "remote.csv"), (sweep["uri"], tmp_path / "local.csv")):
        code, _, err = _sweeper(uri, "export", NAME, "-o", str(path))
        assert code == 0, err[-2000:]
    assert pd.read_csv(tmp_path / "remote.csv").equals(pd.read_csv(tmp_path / "local.csv"))


def test_a_sweep_that_is_not_there_is_one_line_and_exit_2(sweep):
    for command in (["status", "nope"], ["export", "nope"]):
        code, out, err = _sweeper(sweep["uri"], *command)
        assert code == 2 and out == ""
        assert err.splitlines() == [f"sweeper: error: no sweep named 'nope' in the MLflow store {sweep['uri']}"]


def test_params_take_the_types_of_the_config_kind_the_parent_names():
    from sweeper.tracking.report import config_field_types, inferred_type, typed

    types = config_field_types("GANConfig")
    defaults = GANConfig()
    assert types["batch_size"] is int and types["g_lr"] is float and types["mixed_precision"] is bool
    for key, kind in types.items():
        assert typed(str(getattr(defaults, key)), kind) == getattr(defaults, key), key
    assert config_field_types("NotAConfig") == {}
    assert [inferred_type(t) for t in (["1", "-2"], ["1.0", "2"], ["True", "False"], ["a", "1"], [None, "3"])] == [
        int, float, bool, str, int]
