"""No usage statistics by default: the processes `python -m sweeper` starts (the `ui` server, the
driver's Ray trial workers) get MLflow's and Ray's switches off, unless the user set them."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, wait_until_up

SWITCHES = ("MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED")
OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}


def _env(**given) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES and k != "MLFLOW_TRACKING_URI"}
    return {**env, "SWEEPER_OFFLINE": "1", **given}


def _descendants(pid: int) -> list[int]:
    """Every live process under `pid`, from /proc/*/stat's parent field."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone since the listing
            continue
        parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _environ(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.parametrize("given, expected", [({}, OFF),
                                             ({"MLFLOW_DISABLE_TELEMETRY": "false", "RAY_USAGE_STATS_ENABLED": "1"},
                                              {"MLFLOW_DISABLE_TELEMETRY": "false", "RAY_USAGE_STATS_ENABLED": "1"})],
                         ids=["default-off", "opt-in-kept"])
def test_the_ui_server_gets_the_switches(tmp_path, given, expected):
    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        ui = subprocess.Popen([sys.executable, "-m", "sweeper", "ui", "--port", str(port)], cwd=tmp_path,
                              env=_env(**given), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", ui, log)
        servers = [p for p in _descendants(ui.pid) if b"mlflow" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert servers, "no MLflow server process under `python -m sweeper ui`"
        for pid in servers:  # what the server really got, not what we meant to give it
            assert {k: _environ(pid).get(k) for k in SWITCHES} == expected
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)


# That a sweep's trial processes run with both off: tests/test_trial_reuse.py (its sweep records it).
