"""cluster.yaml's MLflow basic auth, run for real on this machine.

The README's command creates the password file; a copy of it goes where cluster.yaml's file_mounts
put it on a node (a "node" here is a home folder under tmp_path). The head's own mlflow command is
taken from cluster.yaml and run by bash, with only what belongs to the cloud replaced (the private
address, the port, the head's folders, the bucket, one worker instead of the default four on 2 cores):
a wrong flag, env variable or ini in the yaml fails here. The credentials are the environment that
the yaml's `ray start` commands give a node, and a real Ray task on a node started with that
environment logs to the server through sweeper's own Tracking client."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import requests
from conftest import free_port, wait_until_up
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from test_cluster_yaml import AWS, readme_secret_command, start_command

from sweeper.definition import SweepError
from sweeper.driver.preflight import prove_tracking
from sweeper.tracking.runs import Tracking

CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
VENV_BIN = str(Path(sys.executable).parent)  # `mlflow` and `python` in the yaml's command are these


class _ServerByPid:
    """The server as `wait_until_up` polls it: started by the yaml's command in its own session, so
    it is not our child; it is known by the PID the command writes."""
    def __init__(self, pid: int):
        self.pid = pid

    def poll(self):
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return 1
        return None


def _node_home(tmp_path: Path, name: str, local_home: Path) -> Path:
    """A node's home with cluster.yaml's file_mounts of the secret applied (rsync -a keeps the mode)."""
    home = tmp_path / name
    home.mkdir()
    for remote, local in AWS["file_mounts"].items():
        if remote.startswith("~/.sweeper-secrets"):
            shutil.copytree(local_home / local.removeprefix("~/"), home / remote.removeprefix("~/"))
    return home


def _bash(command: str, home: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
    env.update(HOME=str(home), PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, check=True, **kwargs)


def _here(command: str, replacements: dict[str, str]) -> str:
    for cloud_text, local_text in replacements.items():
        assert cloud_text in command, f"cluster.yaml's mlflow command no longer has {cloud_text!r}: {command}"
        command = command.replace(cloud_text, local_text)
    return command


def _stop(pid: int, timeout_s: float = 60) -> None:
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _ServerByPid(pid).poll() is None:
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            return
        time.sleep(0.2)


class Server(NamedTuple):
    url: str
    credentials: dict  # what a worker node's `ray start` gets
    secret: Path  # the password file on your machine
    pid: int
    sweeps: Path  # the head's /home/ray/sweeps


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow_auth")
    local_home = tmp / "laptop"
    local_home.mkdir()
    _bash(readme_secret_command(), local_home)
    head, worker = _node_home(tmp, "head", local_home), _node_home(tmp, "worker", local_home)
    sweeps = tmp / "sweeps"  # the head's bind-mounted /home/ray/sweeps
    sweeps.mkdir()
    port = free_port()
    command = _here(start_command(AWS, "mlflow server"), {
        "$(hostname -I | awk '{print $1}')": "127.0.0.1",
        "--port 5000": f"--port {port} --workers 1",
        ":5000": f":{port}",
        "/home/ray/sweeps": str(sweeps),
        "s3://<bucket>/mlartifacts": str(tmp / "artifacts"),
        "/tmp/mlflow.pid": str(tmp / "mlflow.pid"),
    })
    _bash(command, head, cwd=tmp, timeout=60)
    pid = int((tmp / "mlflow.pid").read_text())
    url = f"http://127.0.0.1:{port}"
    try:
        assert (sweeps / "mlflow_uri").read_text().strip() == url
        wait_until_up(f"{url}/health", _ServerByPid(pid), sweeps / "mlflow.log")
        worker_start = start_command(AWS, "ray start", "worker_start_ray_commands")
        prefix = worker_start[:worker_start.index("ray start")]
        node_env = dict(line.split("=", 1) for line in _bash(prefix + "env -0", worker).stdout.split("\0") if line)
        yield Server(url, {k: node_env[k] for k in CREDENTIALS}, local_home / ".sweeper-secrets" / "mlflow-password", pid, sweeps)
    finally:
        _stop(pid)


@pytest.fixture
def no_credentials(monkeypatch):
    for key in CREDENTIALS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def test_the_readme_creates_a_private_secret_once(server):
    credentials, secret = server.credentials, server.secret
    assert secret.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"[0-9a-f]{32}", secret.read_text().strip())
    assert credentials["MLFLOW_TRACKING_PASSWORD"] == secret.read_text().strip()
    before = secret.read_text()
    _bash(readme_secret_command(), secret.parent.parent)
    assert secret.read_text() == before, "running the README's command again must keep the password"


def test_an_unauthenticated_write_is_refused(server, no_credentials, monkeypatch):
    url, credentials = server.url, server.credentials
    create = f"{url}/api/2.0/mlflow/experiments/create"
    assert requests.post(create, json={"name": "anonymous"}, timeout=30).status_code == 401
    wrong = (credentials["MLFLOW_TRACKING_USERNAME"], "not-the-password")
    assert requests.post(create, json={"name": "guessed"}, auth=wrong, timeout=30).status_code == 401
    anonymous = MlflowClient(url)
    with pytest.raises(MlflowException, match="401"):
        anonymous.create_experiment("anonymous-client")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", credentials["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", credentials["MLFLOW_TRACKING_PASSWORD"])
    owner = MlflowClient(url)
    run = owner.create_run(owner.create_experiment("owned")).info.run_id
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(MlflowException, match="401"):
        anonymous.log_metric(run, "fid", 1.0)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", credentials["MLFLOW_TRACKING_PASSWORD"])
    # Refused, not just answered with an error: nothing of it is in the store.
    assert owner.get_run(run).data.metrics == {}
    assert {e.name for e in owner.search_experiments()} & {"anonymous", "guessed", "anonymous-client"} == set()


def test_the_preflight_stops_a_driver_without_credentials(server, no_credentials, monkeypatch):
    url, credentials = server.url, server.credentials
    with pytest.raises(SweepError, match=r"refuses a write.*401.*set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        prove_tracking(url, "some-sweep")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", credentials["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", credentials["MLFLOW_TRACKING_PASSWORD"])
    prove_tracking(url, "some-sweep")


def test_a_trial_on_a_node_logs_with_the_nodes_credentials(server, no_credentials, monkeypatch):
    """A Ray node started with the environment of cluster.yaml's `ray start` (its raylet, and so
    every worker process, inherits it): a task logs through sweeper's Tracking client with no
    credential passed; the same task with a wrong password in its runtime env is refused."""
    import ray

    url, credentials = server.url, server.credentials
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(url)
    experiment = client.create_experiment("trials")
    parent = client.create_run(experiment).info.run_id
    tracking = Tracking(url, experiment, parent)

    @ray.remote(num_cpus=1, max_retries=0)
    def trial(tracking: Tracking, step: int) -> None:
        tracking.client().log_metric(tracking.parent_run_id, "fid", 100.0 - step, step=step)

    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        ray.get(trial.remote(tracking, 1))
        refused = trial.options(runtime_env={"env_vars": {"MLFLOW_TRACKING_PASSWORD": "wrong"}}).remote(tracking, 2)
        with pytest.raises(ray.exceptions.RayTaskError, match="401"):
            ray.get(refused)
    finally:
        ray.shutdown()
    assert [(m.step, m.value) for m in client.get_metric_history(parent, "fid")] == [(1, 99.0)]


def test_the_password_is_in_no_file_log_or_command_line(server):
    """After the writes above: the server's log, its databases (a hash only) and its ini, and the
    command lines of its processes."""
    password = server.credentials["MLFLOW_TRACKING_PASSWORD"]
    session = [d for d in Path("/proc").iterdir() if d.name.isdigit() and _session_of(d) == server.pid]
    assert session, "the server's processes run in the session its command started"
    for process in session:
        assert password not in (process / "cmdline").read_text(errors="replace"), (process / "cmdline").read_text()
    for file in server.sweeps.rglob("*"):
        if file.is_file():
            assert password.encode() not in file.read_bytes(), file


def _session_of(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3])  # pid (comm) state ppid pgrp session
    except (OSError, IndexError, ValueError):
        return None
