"""Trial processes are reused between trials (Tune's reuse_actors), with what a trial sets put back
and what it held freed for the next one (a trial ASHA stopped too); each trial's run ends as the
trial does; its process runs with MLflow's and Ray's usage statistics off; and the console prints one
line per ended trial, not one per eval period."""
import os
import re
import subprocess
import sys

from mlflow.tracking import MlflowClient

TRIALS = 6

SPACE = f'''
import os
import sys
import weakref
from dataclasses import dataclass

import torch
from ray import tune

from sweeper import ASHA, Resources, Sweep
from trainables.config import Config


@dataclass(frozen=True)
class Quadratic(Config):
    x: float = 0.0
    num_evals: int = 2
    seed: int = 0


class Held:
    """Stands for a trial's models: what its frames hold until it ends."""


def fit(cfg, report, restore_from=None):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a trial may change in its process; the next trial must not inherit it
    # Process-wide (this module is sent by value, so its globals may be new for each trial).
    earlier = sys.__dict__.setdefault("_held_by_earlier_trials", [])
    still_held = sum(ref() is not None for ref in earlier)
    held = Held()
    earlier.append(weakref.ref(held))
    from ray._common.usage import usage_lib

    # Usage statistics off in the trial's process (sweeper.cli sets them before Ray starts).
    telemetry_off = (os.environ.get("MLFLOW_DISABLE_TELEMETRY") == "true"
                     and os.environ.get("RAY_USAGE_STATS_ENABLED") == "0" and not usage_lib.usage_stats_enabled())
    for period in range(1, cfg.num_evals + 1):
        report({{"eval_period": period, "loss": (cfg.x - 3) ** 2 + 1 / period, "pid": os.getpid(),
                 "threads_at_start": threads, "still_held_at_start": still_held,
                 "telemetry_off": float(telemetry_off)}}, None)


# ASHA stops some trials inside their report call: their process then runs the next trial.
sweep = Sweep("reuse", Quadratic(), trainable=fit, metric="loss", mode="min",
              scheduler=ASHA(grace_period=1, reduction_factor=2),
              space={{"x": tune.uniform(-10, 10)}}, num_samples={TRIALS}, max_concurrent=1,
              resources=Resources(cpus=2))
'''


def test_one_process_runs_many_trials_each_with_its_own_threads_run_and_console_line(tmp_path):
    (tmp_path / "reuse.py").write_text(SPACE)
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "sweeper", "run", "reuse.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("reuse").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == TRIALS
    pids = set()

    def stopped_at(child) -> int:
        return int(child.data.metrics["eval_period"])

    for child in children:
        x = float(child.data.params["x"])
        losses = client.get_metric_history(child.info.run_id, "loss")
        # Each run holds its own trial's periods, once: nothing of the trial before it in the process.
        periods = stopped_at(child) if child.data.tags["sweeper.outcome"] == "stopped-early" else 2
        assert sorted((m.step, m.value) for m in losses) == [(p, (x - 3) ** 2 + 1 / p) for p in range(1, periods + 1)]
        # The trial before it set one thread; each trial starts with its share of the machine again.
        assert child.data.metrics["threads_at_start"] == 2
        # What the trials before it held (the stopped ones' frames too) is gone when it starts.
        assert child.data.metrics["still_held_at_start"] == 0
        assert child.data.metrics["telemetry_off"] == 1.0  # MLflow's and Ray's usage statistics
        pids.add(child.data.metrics["pid"])
    assert len(pids) < TRIALS, "every trial started a process of its own: Tune reused none"
    assert any(c.data.tags["sweeper.outcome"] == "stopped-early" for c in children), "ASHA stopped none"
    # Each run ends as its trial ends, not with the sweep (the UI's Duration is the trial's): one
    # trial at a time here, so a run ends before the next one starts (2 s for the driver's thread).
    ordered = sorted(children, key=lambda c: c.info.start_time)
    for run, following in zip(ordered, ordered[1:]):
        assert run.info.status == "FINISHED" and run.info.end_time < following.info.start_time + 2000, \
            (run.info.end_time - following.info.start_time, [c.info.end_time for c in ordered])

    lines = (result.stdout + result.stderr).splitlines()
    ended = [line for line in lines if re.match(r"^\S+\s+ended at period [12]/2\s+loss_best \S+\s+\|", line)]
    assert len(ended) == TRIALS, "\n".join(lines)
    assert f"{TRIALS} ended, 0 running" in ended[-1]
    assert not [line for line in lines if re.search(r"\bperiod [12]/2\b", line) and "ended at" not in line], \
        "a per-eval-period line without --verbose"
