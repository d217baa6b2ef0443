"""`python -m sweeper ui` serves the local store's MLflow UI on 127.0.0.1."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from mlflow.tracking import MlflowClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_local_store(tmp_path):
    (tmp_path / "sweeps").mkdir()
    MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'mlflow.db'}").create_experiment("seen-by-the-ui")
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "sweeper", "ui", "--port", str(port)], cwd=tmp_path,
                          env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True)
    try:
        body = _get_when_up(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?max_results=10", ui)
        assert "seen-by-the-ui" in [e["name"] for e in json.loads(body)["experiments"]]
        assert b"MLflow" in _get_when_up(f"http://127.0.0.1:{port}/", ui)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def _get_when_up(url: str, process, timeout_s: float = 90) -> bytes:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, process.stdout.read().decode()[-2000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
