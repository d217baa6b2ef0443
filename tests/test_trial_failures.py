"""Trials that fail, run out of GPU memory, or log all at once into the local sqlite store: real
sweeps (Ray, Optuna, MLflow) of trainables defined in the search-space file, so each costs seconds
of training and the sweep machinery is what is tested."""
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # real sweeps (killed, resumed, failing): minutes

CONCURRENT = 16
STEPS = 12

CROWD = f'''
import time
from dataclasses import dataclass

import torch
from ray import tune

from sweeper import Resources, Sweep
from trainables.config import Config


@dataclass(frozen=True)
class Crowd(Config):
    x: float = 0.0
    batch_size: int = 64
    num_evals: int = {STEPS}
    seed: int = 0


def fit(cfg, report, restore_from=None):
    for period in range(1, cfg.num_evals + 1):
        if cfg.x > 0.75 and period == 3:
            # What CUDA raises; a CPU cannot run out of GPU memory for real.
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        time.sleep(0.05)
        report({{"eval_period": period, "loss": (cfg.x - 0.3) ** 2 + 1 / period, "kimg": period * 0.064}}, None)


sweep = Sweep("crowd", Crowd(), trainable=fit, metric="loss", mode="min", scheduler=None,
              space={{"x": tune.uniform(0, 1)}}, num_samples={CONCURRENT}, max_concurrent={CONCURRENT},
              resources=Resources(cpus=1 / {CONCURRENT}))
'''

BROKEN = '''
from dataclasses import dataclass

from ray import tune

from sweeper import Sweep
from trainables.config import Config


@dataclass(frozen=True)
class Broken(Config):
    x: float = 0.0
    num_evals: int = 2
    seed: int = 0


def fit(cfg, report, restore_from=None):
    report({"eval_period": 1, "loss": cfg.x}, None)
    raise ZeroDivisionError("the model divided by zero")


sweep = Sweep("broken", Broken(), trainable=fit, metric="loss", mode="min", max_failures=0, scheduler=None,
              space={"x": tune.uniform(0, 1)}, num_samples=3)
'''


def _sweeper(tmp_path, *args):
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def _children(client, name):
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("crowd")
    (workdir / "crowd.py").write_text(CROWD)
    result = _sweeper(workdir, "run", "crowd.py")
    return result, MlflowClient(f"sqlite:///{workdir / 'sweeps' / 'mlflow.db'}")


def test_sixteen_concurrent_trials_lose_no_metric_in_the_sqlite_store(crowd):
    result, client = crowd
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, children = _children(client, "crowd")
    assert len(children) == CONCURRENT
    finished = [c for c in children if c.data.tags["sweeper.outcome"] == "completed"]
    assert finished, "every trial ran out of memory: the test proves nothing"
    for child in finished:
        for key in ("loss", "kimg", "eval_period"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert sorted(steps) == list(range(1, STEPS + 1)), (key, steps)


def test_a_trial_out_of_gpu_memory_ends_oom_with_a_hint_and_the_sweep_goes_on(crowd):
    result, client = crowd
    _, children = _children(client, "crowd")
    oom = [c for c in children if float(c.data.params["x"]) > 0.75]
    assert oom, "no trial drew x > 0.75: the test proves nothing"
    for child in oom:
        assert child.data.tags["sweeper.outcome"] == "oom" and child.info.status == "FAILED"
        assert "batch_size=64" in child.data.tags["sweeper.oom"] and "gpu_fraction" in child.data.tags["sweeper.oom"]
        # The periods before the OOM are kept; the OOM itself is not a logged period.
        assert [m.step for m in client.get_metric_history(child.info.run_id, "loss")] == [1, 2]
    assert f"{len(oom)} oom" in result.stdout


def test_a_sweep_where_every_trial_fails_ends_cleanly_with_one_line_why(tmp_path):
    (tmp_path / "broken.py").write_text(BROKEN)
    result = _sweeper(tmp_path, "run", "broken.py")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("nothing registered: all 3 trials failed or diverged (3 error); "
            "first error: ZeroDivisionError: the model divided by zero") in result.stdout
    assert "Traceback" not in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'mlflow.db'}")
    parents, children = _children(client, "broken")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3
    assert all(c.info.status == "FAILED" and c.data.tags["sweeper.outcome"] == "error" for c in children)
    assert client.search_registered_models() == []


FORCED = '''
import sys

import sweeper.driver.run
from sweeper.cli import main


def forced(*args, **kwargs):
    raise RuntimeError("forced failure after the trials")


sweeper.driver.run.close_trial_runs = forced  # an internal failure, once the parent run exists
sys.exit(main(["run", "quadratic.py"]))
'''

QUADRATIC = (BROKEN.replace('raise ZeroDivisionError("the model divided by zero")', "").replace('"broken"', '"forced"')
             .replace("num_samples=3", "num_samples=1"))


def test_an_internal_failure_keeps_its_traceback_printed_and_in_the_parent_run(tmp_path):
    (tmp_path / "quadratic.py").write_text(QUADRATIC)
    (tmp_path / "forced.py").write_text(FORCED)
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([sys.executable, "forced.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: forced failure after the trials" in result.stderr
    assert "sweeper: internal error" in result.stderr and "sweeper: error:" not in result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'mlflow.db'}")
    (parent,), (child,) = _children(client, "forced")
    assert parent.info.status == "FAILED" and parent.data.tags["sweeper.outcome"] == "error"
    kept = client.download_artifacts(parent.info.run_id, "error.txt", str(tmp_path))
    assert "RuntimeError: forced failure after the trials" in open(kept).read()
