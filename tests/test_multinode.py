"""A real multi-node Ray cluster on one machine that shares nothing by accident: a head and two
worker nodes started with `ray start` (each its own working directory, HOME, SWEEPER_CACHE and
--temp-dir), a real `mlflow server` on 127.0.0.1 with proxied artifacts, Tune storage in an
S3-compatible server on 127.0.0.1 (moto in server mode, the closest real S3 API reachable here),
and the sweep submitted with `ray job submit`. Everything is started as a process group and torn
down by PID, also when the test fails."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAME = "multinode"
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}

SPACE = '''
import os
from pathlib import Path

from ray import tune

from sweeper import FinalEval, Sweep
from trainables.config import GANConfig
from trainables.training.gan import train_gan


def on_this_node(cfg, report, **inputs):
    # Defined here, in a file only the driver loaded: it reaches the workers by value.
    (Path(os.environ["SWEEPER_CACHE"]) / "custom-trainable-ran").write_text(os.getcwd())
    return train_gan(cfg, report, **inputs)


sweep = Sweep("multinode", GANConfig(resolution=32, g_width=16, d_width=16, batch_size=16, steps_per_eval=5,
                                     num_evals=2, fid_samples=64, ref_samples=64, final_fid_samples=64),
              trainable=on_this_node, space={"g_lr": tune.choice([1e-4, 3e-4])}, num_samples=2,
              final=FinalEval(top_k=1))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Process groups started for the test, killed by PID at the end whatever happened."""

    def __init__(self):
        self.groups = []

    def start(self, args, *, cwd, env, log: Path) -> subprocess.Popen:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.groups.append(process)
        return process

    def stop(self):
        for process in reversed(self.groups):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        for process in self.groups:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _wait_for(check, what: str, processes: "Processes", timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [p.args for p in processes.groups if p.poll() is not None]
        assert not dead, f"exited while waiting for {what}: {dead[0]}"
        try:
            if check():
                return
        except Exception:  # not up yet: refused connections come as OSError, or as botocore's own errors
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up in {timeout_s} s")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3):
        return True


def _node(root: Path, name: str) -> tuple[Path, dict]:
    home = root / name
    for sub in ("home", "cwd", "cache"):
        (home / sub).mkdir(parents=True)
    # Ray's socket paths must stay under 107 bytes: its temp dir lives in a short folder, linked here.
    short = Path(tempfile.mkdtemp(prefix="sw-", dir="/tmp"))
    (home / "tmp").symlink_to(short)
    env = {**os.environ, **AWS, "HOME": str(home / "home"), "SWEEPER_CACHE": str(home / "cache"),
           "SWEEPER_OFFLINE": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "SWEEPER_STORAGE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    # A local ray.init() earlier in this pytest process turns token auth on in os.environ, with its
    # token under the real HOME; this cluster has its own HOMEs, so it runs without (as cluster.yaml's).
    env["RAY_AUTH_MODE"] = "disabled"
    return home, env


def _agent_ports() -> list[str]:
    # Every node on one machine needs its own agent ports (Ray's defaults would collide).
    return ["--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
            "--runtime-env-agent-port", str(_free_port()), "--metrics-export-port", str(_free_port())]


@pytest.fixture(scope="module")
def multinode(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    processes = Processes()
    try:
        yield _run_everything(root, processes)
    finally:
        processes.stop()
        for link in root.glob("*/tmp"):
            shutil.rmtree(link.resolve(), ignore_errors=True)


def _run_everything(root: Path, processes: Processes) -> dict:
    # Storage: an S3 API on 127.0.0.1. MLflow: a real server that proxies artifacts into its own folder.
    setup_start = time.monotonic()
    s3_port, mlflow_port, gcs_port, dashboard_port = (_free_port() for _ in range(4))
    services, env = _node(root, "services")
    processes.start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], cwd=services / "cwd", env=env,
                    log=services / "moto.log")
    processes.start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                     "--workers", "1", "--backend-store-uri", f"sqlite:///{services / 'mlflow.db'}", "--serve-artifacts",
                     "--artifacts-destination", str(services / "mlartifacts")],
                    cwd=services / "cwd", env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                    log=services / "mlflow.log")
    head, head_env = _node(root, "head")
    processes.start([str(BIN / "ray"), "start", "--head", "--block", "--port", str(gcs_port), "--num-cpus", "0",
                     "--temp-dir", str((head / "tmp").resolve()), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(dashboard_port), *_agent_ports()],
                    cwd=head / "cwd", env=head_env, log=head / "ray.log")
    _wait_for(lambda: _http_ok(f"http://127.0.0.1:{dashboard_port}/api/version"), "the Ray head", processes)
    workers = []
    for name in ("worker1", "worker2"):
        home, env = _node(root, name)
        processes.start([str(BIN / "ray"), "start", "--block", "--address", f"127.0.0.1:{gcs_port}", "--num-cpus", "1",
                         "--temp-dir", str((home / "tmp").resolve()), *_agent_ports()], cwd=home / "cwd", env=env,
                        log=home / "ray.log")
        workers.append(home)
    import boto3

    _wait_for(lambda: boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", **_boto_auth())
              .create_bucket(Bucket="sweeps"), "moto", processes)
    _wait_for(lambda: _http_ok(f"http://127.0.0.1:{mlflow_port}/health"), "the mlflow server", processes)

    # The sweep, submitted as a user would. Its search-space file (with its own trainable) is the job's
    # working directory, uploaded by Ray; the driver runs on the head.
    job_dir = root / "job"
    job_dir.mkdir()
    (job_dir / "space.py").write_text(SPACE)
    storage = f"s3://sweeps/tune?endpoint_override=127.0.0.1:{s3_port}&scheme=http"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}", "SWEEPER_STORAGE": storage}}
    started = time.monotonic()
    submitted = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--working-dir",
         str(job_dir), "--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", "sweeper", "run",
         "space.py"],
        cwd=job_dir, env={**head_env, "PATH": f"{BIN}:{os.environ['PATH']}"}, capture_output=True, text=True,
        timeout=600)
    print(f"cluster up in {started - setup_start:.0f} s, job in {time.monotonic() - started:.0f} s")
    return {"submitted": submitted, "root": root, "head": head, "workers": workers, "s3_port": s3_port,
            "mlflow": f"http://127.0.0.1:{mlflow_port}", "job_dir": job_dir}


def _boto_auth() -> dict:
    return {"aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
            "region_name": AWS["AWS_DEFAULT_REGION"]}


def test_the_job_succeeds(multinode):
    submitted = multinode["submitted"]
    assert submitted.returncode == 0 and "succeeded" in submitted.stdout, \
        submitted.stdout[-4000:] + submitted.stderr[-3000:]
    assert "best trial:" in submitted.stdout


def test_trials_ran_on_both_worker_nodes_with_the_files_own_trainable(multinode):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(multinode["mlflow"])
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and len({c.data.tags["sweeper.node_id"] for c in children}) == 2
    for worker in multinode["workers"]:
        assert (worker / "cache" / "custom-trainable-ran").is_file()  # in each worker's own cache
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "fid")]
        assert steps in ([1], [1, 2])  # ASHA may stop one of the two after its first eval
        assert [a.path for a in client.list_artifacts(child.info.run_id, "grids")] == \
               [f"grids/eval_{step:04d}.png" for step in steps]


def test_checkpoints_are_in_the_bucket_and_nothing_is_local(multinode):
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{multinode['s3_port']}", **_boto_auth())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sweeps", Prefix="tune/")["Contents"]]
    assert sum(k.endswith("checkpoint.pt") for k in keys) >= 2
    # What `sweeper resume --storage s3://...` reads, beside Tune's own state in the bucket.
    (state_key,) = [k for k in keys if k.endswith("/sweeper.json")]
    assert json.loads(s3.get_object(Bucket="sweeps", Key=state_key)["Body"].read())["status"] == "finished"
    assert state_key.replace("sweeper.json", "sweep.pkl") in keys and state_key.replace("sweeper.json", "tuner.pkl") in keys
    local = [p for p in multinode["root"].rglob("sweeps") if p.is_dir()]
    assert local == []  # no driver-local sweeps/ (store, artifacts, ray_results) on any node


def test_weights_reached_the_workers_by_object_store_and_the_model_loads_from_the_server(multinode):
    import mlflow
    import torch

    shipped = [list((w / "cache" / "shipped").glob("*.pth")) for w in multinode["workers"]]
    assert any(shipped)  # the final evaluation ran on a worker with the driver's weights, by content hash
    mlflow.set_tracking_uri(multinode["mlflow"])
    G = mlflow.pytorch.load_model(f"models:/{NAME}-generator@best")
    with torch.no_grad():
        assert G(torch.randn(2, 128)).shape == (2, 3, 32, 32)
