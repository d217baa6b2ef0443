"""Each trial's run carries MLflow's system metrics, sampled only while the trial runs (a monitor a
trial leaves is stopped, one an outage ended is started again, stopping one never waits on a hung
server), and the trial process's own peak memory, measured per trial although Tune reuses the process."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
from conftest import free_port, start_server, stop_server, wait_until_up
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeper.trial.system import (
    INTERVAL_ENV,
    PEAK_RSS,
    STOP_WAIT_S,
    PeakMemory,
    TrialUsage,
    sampling_interval,
    stop_leftover_monitor,
)
from trainables.errors import BadInput

CPU, MEMORY = "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"
MIB = 2 ** 20
BIG_MIB = 200


def samples(client, run_id, key=CPU) -> list:
    # The test's own reads retry (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 is set for the monitor under test):
    # a server just resumed from SIGSTOP resets the kept-alive connections it held while stopped.
    for attempt in range(5):
        try:
            return client.get_metric_history(run_id, key)
        except MlflowException as error:
            if "Connection" not in str(error) or attempt == 4:
                raise
            time.sleep(0.5)


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def monitor_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


def test_sampling_interval_defaults_to_10_s_0_is_off_and_a_bad_value_names_the_variable():
    assert sampling_interval({}) == 10.0
    assert sampling_interval({INTERVAL_ENV: "0"}) == 0.0
    assert sampling_interval({INTERVAL_ENV: " 2.5 "}) == 2.5
    for bad in ("ten", "-1", "nan", "inf"):
        with pytest.raises(BadInput, match=f"^{INTERVAL_ENV}='{bad}': not a number of seconds"):
            sampling_interval({INTERVAL_ENV: bad})


def test_peak_rss_is_the_trials_own_although_the_process_is_reused():
    first_trial = PeakMemory()
    held = np.ones(BIG_MIB * MIB // 8)  # ones: every page touched, resident
    rss_while_held = psutil.Process().memory_info().rss / MIB  # the reference: psutil, not /proc/self/status
    del held
    peak_of_first_trial = first_trial.read()[PEAK_RSS]
    assert peak_of_first_trial >= rss_while_held - 1
    assert psutil.Process().memory_info().rss / MIB < rss_while_held - BIG_MIB / 2, "the array was not given back"

    later_trial = PeakMemory()  # the next trial in this process
    small = np.ones(8 * MIB // 8)
    peak_of_later_trial = later_trial.read()[PEAK_RSS]
    assert psutil.Process().memory_info().rss / MIB - 1 <= peak_of_later_trial < peak_of_first_trial - BIG_MIB / 2
    del small


def test_a_trials_monitor_samples_while_it_runs_and_none_outlives_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("system")
    left, following = (client.create_run(experiment).info.run_id for _ in range(2))

    # A trial whose function never unwound: its monitor is still running when the next trial starts.
    TrialUsage(uri, left, interval_s=0.2).__enter__()
    wait_for(lambda: len(samples(client, left)) >= 2, 60, "the first trial's samples")
    assert {CPU, MEMORY} <= set(client.get_run(left).data.metrics)

    with TrialUsage(uri, following, interval_s=0.2):  # stops the one left, starts its own
        stopped_at = len(samples(client, left))
        wait_for(lambda: len(samples(client, following)) >= 3, 60, "the next trial's samples")
        assert len(monitor_threads()) == 1
    ended_with = len(samples(client, following))
    assert not monitor_threads()
    time.sleep(1.0)  # five intervals; both runs are still RUNNING, so only a stop can end a monitor
    assert client.get_run(left).info.status == client.get_run(following).info.status == "RUNNING"
    assert len(samples(client, left)) <= stopped_at + 1  # one in flight as it was stopped, at most
    assert len(samples(client, following)) == ended_with
    assert [m.step for m in sorted(samples(client, following), key=lambda m: m.step)] == list(range(ended_with))

    with TrialUsage(uri, following, interval_s=0):  # SWEEPER_SYSTEM_METRICS_S=0: off
        assert not monitor_threads()


def test_an_outage_ends_the_monitor_it_is_started_again_and_stopping_never_waits_on_a_hung_server(
        tmp_path, monkeypatch):
    port = free_port()
    server = start_server(tmp_path, port)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", server, tmp_path / "server.log")
        uri = f"http://127.0.0.1:{port}"
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")

        usage = TrialUsage(uri, run_id, interval_s=0.2).__enter__()
        wait_for(lambda: len(samples(client, run_id)) >= 2, 60, "samples before the outage")
        os.killpg(server.pid, signal.SIGSTOP)  # hung: connections accepted, never answered
        wait_for(lambda: not monitor_threads(), 30, "MLflow's monitor to end in the outage")
        usage.at_eval_period(mlflow_reachable=False)  # the spool could not deliver: not started again
        assert not monitor_threads()
        os.killpg(server.pid, signal.SIGCONT)

        before = max(m.step for m in samples(client, run_id))
        usage.at_eval_period(mlflow_reachable=True)
        wait_for(lambda: max(m.step for m in samples(client, run_id)) >= before + 2, 60, "samples after it")
        steps = sorted(m.step for m in samples(client, run_id))
        assert len(steps) == len(set(steps)), "the restarted monitor logged over the earlier steps"

        # Hung again, longer than the client waits: the trial's end must not wait for it.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(STOP_WAIT_S * 4)))
        os.killpg(server.pid, signal.SIGSTOP)
        time.sleep(0.5)  # the monitor is now blocked in a call to the server
        started = time.monotonic()
        usage.__exit__(None, None, None)
        assert time.monotonic() - started < STOP_WAIT_S + 1.5
        os.killpg(server.pid, signal.SIGCONT)
        stopped_with = len(samples(client, run_id))
        wait_for(lambda: not monitor_threads(), 30, "the stopped monitor's thread to end")
        assert len(samples(client, run_id)) == stopped_with, "a stopped monitor logged"
    finally:
        os.killpg(server.pid, signal.SIGCONT)
        stop_leftover_monitor()
        stop_server(server)


INTERVAL_S = 0.2
TRIALS = 3

SPACE = f'''
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import psutil
from ray import tune

from sweeper import ASHA, Resources, Sweep
from trainables.config import Config


@dataclass(frozen=True)
class Holder(Config):
    x: float = 0.0
    num_evals: int = 3
    seed: int = 0


def fit(cfg, report, restore_from=None):
    # Process-wide: the first trial of a process holds {BIG_MIB} MiB through its first period, the
    # later ones little; each does worse than the one before, so ASHA stops some inside report.
    order = sys.__dict__["_trials_in_this_process"] = sys.__dict__.get("_trials_in_this_process", 0) + 1
    held = np.ones(({BIG_MIB} if order == 1 else 4) * 2 ** 20 // 8)
    for period in range(1, cfg.num_evals + 1):
        time.sleep(1.5)
        rss = psutil.Process().memory_info().rss / 2 ** 20
        report({{"eval_period": period, "loss": order + cfg.x * 1e-3, "pid": os.getpid(), "order": order,
                 "held_mib": held.nbytes / 2 ** 20, "rss_mib": rss}}, None)
        held = np.ones(1)


sweep = Sweep("system", Holder(), trainable=fit, metric="loss", mode="min",
              scheduler=ASHA(grace_period=1, reduction_factor=2),
              space={{"x": tune.uniform(0, 1)}}, num_samples={TRIALS}, max_concurrent=1,
              resources=Resources(cpus=2))
'''


def test_each_trials_run_has_system_metrics_while_it_ran_and_its_own_peak_rss(tmp_path):
    (tmp_path / "system.py").write_text(SPACE)
    env = {**os.environ, "SWEEPER_OFFLINE": "1", INTERVAL_ENV: str(INTERVAL_S)}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([sys.executable, "-m", "sweeper", "run", "system.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "monitoring system metrics" not in result.stdout + result.stderr  # MLflow's INFO, a line per trial

    client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("system").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == TRIALS
    for child in children:
        run_id, ended = child.info.run_id, child.info.end_time
        assert child.data.tags["sweeper.node_id"]
        for key in (CPU, MEMORY):
            history = samples(client, run_id, key)
            assert len(history) >= 3, (key, len(history))
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(len(history)))
            # Sampled while the trial ran (one sample in flight as it stopped, at most), not during the
            # next trial in its process.
            assert max(m.timestamp for m in history) <= ended + INTERVAL_S * 1000 + 1000, \
                (max(m.timestamp for m in history) - ended)
        # The peak so far, per eval period: at least what the trial held at any report (psutil's RSS).
        peaks = {m.step: m.value for m in client.get_metric_history(run_id, PEAK_RSS)}
        rss = {m.step: m.value for m in client.get_metric_history(run_id, "rss_mib")}
        assert peaks and peaks.keys() == rss.keys()
        assert all(peaks[p] >= rss[p] - 1 for p in peaks), (peaks, rss)
        assert all(peaks[p] <= peaks[p + 1] for p in peaks if p + 1 in peaks)  # the peak so far

    by_process = {}
    for child in sorted(children, key=lambda c: c.info.start_time):
        by_process.setdefault(child.data.metrics["pid"], []).append(child)
    reused = [trials for trials in by_process.values() if len(trials) > 1]
    assert reused, "every trial started a process of its own: Tune reused none"
    for first, *later in reused:
        assert first.data.metrics["order"] == 1 and first.data.metrics[PEAK_RSS] >= BIG_MIB
        for trial in later:  # it held 4 MiB: the first trial's peak is not its own
            assert trial.data.metrics["held_mib"] == 4
            assert trial.data.metrics[PEAK_RSS] < first.data.metrics[PEAK_RSS] - BIG_MIB / 2
