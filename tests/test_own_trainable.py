"""A Sweep of a trainable with its own config, both defined in the search-space file itself: the
file is imported under a name only the driver knows, so the trial processes must get the module
by value (before, every trial failed with `ModuleNotFoundError: No module named 'sweeper_space_…'`)."""
import os
import subprocess
import sys

from mlflow.tracking import MlflowClient

SPACE = '''
from dataclasses import dataclass

from ray import tune

from sweeper import Sweep
from trainables.config import Config, ConfigError


@dataclass(frozen=True)
class Quadratic(Config):
    x: float = 0.0
    num_evals: int = 3
    seed: int = 0

    def validate(self):
        if not -10 <= self.x <= 10:
            raise ConfigError(f"x: must be in [-10, 10], got {self.x}")
        return self


def fit(cfg, report, restore_from=None):
    for period in range(1, cfg.num_evals + 1):
        report({"eval_period": period, "loss": (cfg.x - 3) ** 2 + 1 / period}, None)


sweep = Sweep("quadratic", Quadratic(), trainable=fit, metric="loss", mode="min",
              space={"x": tune.uniform(-10, 10)}, warm_start=[{"x": 0.0}], num_samples=4)
'''


def _sweeper(tmp_path, *args):
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_a_trainable_and_config_defined_in_the_space_file_run_in_every_trial(tmp_path):
    (tmp_path / "quadratic.py").write_text(SPACE)
    dry = _sweeper(tmp_path, "run", "quadratic.py", "--dry-run")
    assert dry.returncode == 0 and "4 trials of fit, minimising loss" in dry.stdout, dry.stderr[-2000:]

    result = _sweeper(tmp_path, "run", "quadratic.py")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("quadratic").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4
    for child in children:
        x = float(child.data.params["x"])
        history = client.get_metric_history(child.info.run_id, "loss")
        assert history and history[0].value == (x - 3) ** 2 + 1  # what `fit` computed in the trial process
        assert child.info.status == "FINISHED" and child.data.tags["sweeper.outcome"] in ("completed", "stopped-early")
    # No final re-measurement for a plain trainable: its best reported loss picks the winner; nothing registered.
    best = min(children, key=lambda c: min(m.value for m in client.get_metric_history(c.info.run_id, "loss")))
    assert f"best trial: {best.data.tags['sweeper.trial_id']}  best_loss" in result.stdout
    assert client.search_registered_models() == []


def test_a_bad_value_of_an_own_config_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "quadratic.py").write_text(SPACE.replace('warm_start=[{"x": 0.0}]', 'warm_start=[{"x": 0.0}]')
                                           .replace("x: float = 0.0", "x: float = 0.0\n    scale: float = 1.0"))
    result = _sweeper(tmp_path, "run", "quadratic.py", "--set", "scale=big", "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["sweeper: error: --set scale=big: expected float"]
