"""A store that cannot be written, or a device the machine can never provide, is found before any
data is prepared or Ray starts: `python -m sweeper run --quick` (a real subprocess) answers exit 2
and one line naming the culprit in seconds, and leaves nothing behind. And the probes themselves
(sweeper.driver.preflight) on stores that can be written: they pass and leave no trace."""
import os
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from conftest import free_port, wait_until_up
from mlflow.tracking import MlflowClient
from ray import tune

from sweeper.definition import Sweep, SweepError
from sweeper.driver import preflight
from trainables.config import GANConfig

# The data, the reference statistics and Ray would take minutes on two cores (issue 21: still
# computing after 2); the checks come before all of them, so seconds suffice.
FAST_S = 60
SPACE = '''
from ray import tune

from sweeper import Sweep
from trainables.config import GANConfig

sweep = Sweep(
    name="preflight",
    config=GANConfig(data="toy-faces", resolution=32, g_width=8, d_width=8, batch_size=8, steps_per_eval=2,
                     num_evals=1, fid_samples=8, ref_samples=8, final_fid_samples=8, eval_extractor="proxy"),
    space={"g_lr": tune.loguniform(1e-4, 1e-3)},
    num_samples=1,
)
'''


@pytest.fixture
def workdir(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "space.py").write_text(SPACE)
    (tmp_path / "a_file").write_text("a regular file: nothing can be created under it\n")
    return workdir


def _run(workdir, *args, **env):
    environment = {**os.environ, "SWEEPER_OFFLINE": "1", "SWEEPER_CACHE": str(workdir.parent / "cache"), **env}
    for name in ("MLFLOW_TRACKING_URI", "SWEEPER_STORAGE", "RAY_ADDRESS"):
        if name not in env:
            environment.pop(name, None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "sweeper", "run", "space.py", "--quick", *args], cwd=workdir,
                            env=environment, capture_output=True, text=True, timeout=300)
    return result, time.monotonic() - started


def _refused(workdir, fragments, *args, **env):
    """Exit 2, one stderr line with every fragment, in seconds; the folder as it was."""
    result, took = _run(workdir, *args, **env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("sweeper: error: "), result.stderr
    assert all(f in lines[0] for f in fragments), (fragments, lines[0])
    assert took < FAST_S, f"refused after {took:.0f} s"
    assert sorted(p.name for p in workdir.iterdir()) == ["space.py"]  # no sweeps/, no probe left
    assert not (workdir.parent / "cache").exists() or not any((workdir.parent / "cache").iterdir())
    return lines[0]


@pytest.mark.parametrize("uri", ["sqlite:////proc/nonexistent/x.db", "sqlite:///{tmp}/a_file/sweeps/mlflow.db"])
def test_a_tracking_store_that_cannot_be_created_is_refused_in_seconds(workdir, uri):
    uri = uri.format(tmp=workdir.parent)
    _refused(workdir, [f"MLFLOW_TRACKING_URI={uri}"], MLFLOW_TRACKING_URI=uri)


def test_a_tracking_store_that_is_not_a_database_is_refused_by_its_write(workdir):
    """The file exists and is writable: only a write finds that sqlite cannot use it."""
    store = workdir.parent / "store.db"
    store.write_bytes(b"not an sqlite database" * 100)
    uri = f"sqlite:///{store}"
    line = _refused(workdir, [f"MLFLOW_TRACKING_URI={uri}", "not a usable sqlite database"], MLFLOW_TRACKING_URI=uri)
    assert store.read_bytes() == b"not an sqlite database" * 100, line


@pytest.mark.parametrize("how", ["--storage", "SWEEPER_STORAGE"])
def test_a_storage_that_cannot_be_created_is_refused_in_seconds(workdir, how):
    # As root, os.access says /proc is writable; only a real write says no.
    storage = "/proc/nonexistent/ray_results"
    given = {"args": ["--storage", storage]} if how == "--storage" else {"env": {"SWEEPER_STORAGE": storage}}
    _refused(workdir, [storage], *given.get("args", []), **given.get("env", {}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: device=cuda is allowed here")
def test_device_cuda_without_a_gpu_is_refused_in_seconds(workdir):
    _refused(workdir, ["device", "cuda", "no usable GPU"], "--set", "device=cuda")


def test_device_cuda_is_allowed_where_a_gpu_exists_or_a_cluster_may_add_one(monkeypatch):
    """The same check as the run's: it refuses exactly where torch sees no GPU, and never on a
    cluster (RAY_ADDRESS), whose autoscaler may add GPU workers that are not up yet."""
    sweep = _sweep("cuda")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if torch.cuda.is_available():
        preflight.check_device(sweep)
    else:
        with pytest.raises(SweepError, match="^device: 'cuda'"):
            preflight.check_device(sweep)
    for device in ("auto", "cpu"):
        preflight.check_device(_sweep(device))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    preflight.check_device(sweep)


def _sweep(device: str) -> Sweep:
    return Sweep("dev", GANConfig(device=device, resolution=32), space={"g_lr": tune.loguniform(1e-4, 1e-3)})


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_probes_of_writable_stores_pass_and_leave_nothing(tmp_path):
    # A new store and a new storage: proven where they will be created, nothing created yet.
    preflight.prove_tracking(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'mlflow.db'}", "x")
    preflight.prove_storage(str(tmp_path / "ray_results" / "x-20260101-000000"))
    preflight.prove_storage((tmp_path / "elsewhere").as_uri())
    assert _tree(tmp_path) == []
    # An existing MLflow store: a table created and rolled back, no journal left beside it.
    db = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").create_experiment("existing")
    with sqlite3.connect(db) as connection:
        tables = connection.execute("select name from sqlite_master order by name").fetchall()
    before = _tree(tmp_path)
    preflight.prove_tracking(f"sqlite:///{db}", "existing")
    with sqlite3.connect(db) as connection:
        assert connection.execute("select name from sqlite_master order by name").fetchall() == tables
    assert _tree(tmp_path) == before


def test_a_tracking_server_takes_a_tag_and_loses_it(tmp_path):
    """A real `mlflow server`: the probe's tag is written (a read-only server would refuse it) and
    deleted; the sweep's experiment when it exists, else the Default one."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "artifacts")],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_until_up(f"{uri}/health", server, log)
        client = MlflowClient(uri)
        preflight.prove_tracking(uri, "not-there-yet")
        assert client.get_experiment_by_name("not-there-yet") is None
        assert preflight.PROBE_TAG not in client.get_experiment("0").tags
        experiment = client.create_experiment("sweep")
        preflight.prove_tracking(uri, "sweep")
        assert preflight.PROBE_TAG not in client.get_experiment(experiment).tags
        # Where the write is refused (here: the sweep's experiment was deleted), one line naming the URI.
        client.delete_experiment(experiment)
        with pytest.raises(SweepError, match=f"^MLFLOW_TRACKING_URI={uri}: the tracking store refuses a write"):
            preflight.prove_tracking(uri, "sweep")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
