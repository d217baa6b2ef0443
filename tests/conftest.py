"""Shared test setup: an isolated cache, no downloads, and small real datasets/extractors."""
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Known dataset names (cifar10:cat, afhq-cat, ...) resolve from the photos beside the repository, never
# from a download. In os.environ at import, so every subprocess (sweeps, Ray workers) inherits it; a
# value the developer set wins.
if SHARED_DATA.is_dir():
    os.environ.setdefault("SWEEPER_DATASETS", str(SHARED_DATA))


# The suite runs on two pytest-xdist workers (`-n 2 --dist loadfile --no-loadscope-reorder`,
# pyproject.toml): a sweep spends much of its time waiting (process and Ray starts, Ray tasks, the
# store), which the other worker fills. A module goes to one worker whole, so its module-scoped sweep
# runs once; the session's quick sweep runs once per run (`quick_sweep`). A worker takes the next
# module in this order when it runs short: the modules whose fixtures run whole sweeps first, slowest
# first (by --durations), so that neither worker is left with a long one at the end; the other
# modules that read the quick sweep come late, once it has run.
SLOW_FIRST = ("test_classifier_sweep", "test_sweep_e2e", "test_outages", "test_cluster", "test_pbt", "test_resume",
              "test_multinode", "test_trial_failures", "test_budget", "test_late_delivery", "test_status_export",
              "test_real_data_sweeps")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never download (SWEEPER_OFFLINE) and never touch the user's cache.
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("SWEEPER_OFFLINE", "1")
    monkeypatch.delenv("SWEEPER_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def quick_sweep(tmp_path_factory):
    """One finished `python -m sweeper run search_spaces/wgangp.py --quick` (shortened), shared by
    every module that inspects a real sweep: (the command's result, a client on its store, its folder).
    Once per test run: under xdist the first worker to need it runs it, holding a file lock in the
    run's temporary folder that every worker shares, and the others read what it left."""
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    workdir, record = shared / "quick_sweep", shared / "quick_sweep.json"
    with FileLock(str(shared / "quick_sweep.lock")):
        if not record.exists():
            workdir.mkdir()
            env = {**os.environ, "SWEEPER_OFFLINE": "1", "SWEEPER_CACHE": str(workdir / "cache")}
            env.pop("MLFLOW_TRACKING_URI", None)
            ran = subprocess.run(
                # The quick budget cut to 80 G steps (4 x 20, not 9 x 135): these tests
                # inspect what a sweep leaves behind, not how good its faces are, and CI has 2 cores.
                [sys.executable, "-m", "sweeper", "run", str(REPO / "search_spaces" / "wgangp.py"), "--quick",
                 "--set", "steps_per_eval=20", "--set", "num_evals=4",
                 # And Inception (CPU: ~13 img/s on 2 cores) on 96 real images of the report half (fid_final's
                 # reference statistics) and 64 generated for each group's pick (fid_final): not quick's 256
                 # and 128. fid_select and the per-eval FID are the proxy's.
                 "--set", "ref_samples=96", "--set", "final_fid_samples=64"],
                cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
            record.write_text(json.dumps({"args": ran.args, "returncode": ran.returncode, "stdout": ran.stdout,
                                          "stderr": ran.stderr}))
        result = subprocess.CompletedProcess(**json.loads(record.read_text()))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    client = MlflowClient(f"sqlite:///{workdir / 'sweeps' / 'mlflow.db'}")
    return result, client, workdir


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real photos not found at {path} (see ../shared/data/README.md)")
    return path


class Stopped(Exception):
    """The trial was killed (ASHA pause, node loss): the process ends mid-run."""


class Recorder:
    """The test's `report`: keeps the metrics and a copy of every checkpoint directory; with
    `stop_after` it kills the run after that many reports, as Ray would."""
    def __init__(self, root, stop_after=None):
        self.root, self.metrics, self.checkpoints, self.stop_after = root, [], [], stop_after

    def __call__(self, metrics, directory):
        self.metrics.append(dict(metrics))
        if directory is not None:
            kept = self.root / f"ckpt_{len(self.metrics)}"
            shutil.copytree(directory, kept)
            self.checkpoints.append(kept)
        if len(self.metrics) == self.stop_after:
            raise Stopped


def store_count(db: Path, query: str) -> int:
    """A `select count(*)` on a sweep's MLflow sqlite store; 0 before the store or its tables exist."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        try:
            return connection.execute(query).fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def assert_same_state(a, b, where: str) -> None:
    """Recursively equal state dicts: every tensor with torch.equal (dtype too), everything else with ==."""
    import torch
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:`port` with its sqlite store and artifacts under `root`,
    logging to root/server.log (appended across restarts; a file, not a pipe nobody reads: a full
    pipe would block the server). Not waited for: see `wait_until_up`."""
    log = (root / "server.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # No background job runner (five huey consumers): sweeps use none of its jobs, and it
        # would take a third of the server's start and most of its shutdown on two cores.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


def stop_server(process: subprocess.Popen, timeout_s: float = 60) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=timeout_s)


def wait_until_up(url: str, process, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def one_cpu_nodes(cache_dir: Path, workers: int):
    """A `ray.cluster_utils.Cluster` on this machine: a head and `workers` worker nodes of one CPU
    each (so trials of one CPU land on different nodes), yielding (cluster, worker nodes)."""
    from ray._common.utils import reset_ray_address
    from ray._private.utils import read_ray_address, write_ray_address
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as env:
        # The raylets (and so every trial worker) inherit this process's environment.
        env.setenv("SWEEPER_CACHE", str(cache_dir))
        env.setenv("SWEEPER_OFFLINE", "1")
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.delenv("RAY_ADDRESS", raising=False)
        previous = read_ray_address()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        # Cluster writes its address to /tmp/ray/ray_current_cluster, where a plain ray.init() anywhere
        # on this machine (another test run's sweep) would find it and join this cluster. The sweeps
        # here are given RAY_ADDRESS, so put the file back as it was.
        if previous:
            write_ray_address(previous)
        else:
            reset_ray_address()
        try:
            nodes = [cluster.add_node(num_cpus=1) for _ in range(workers)]
            cluster.wait_for_nodes()
            yield cluster, nodes
        finally:
            cluster.shutdown()


CHROMIUM = shutil.which("chromium")  # Debian's; Playwright drives it and downloads no browser


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, for the tests that look at what a person sees (the MLflow UI, the report)."""
    if CHROMIUM is None:
        pytest.skip("no `chromium` on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()
