"""The layered package from a user's side: a search-space file imports nothing heavy, and a sweep
recorded by the sweeper before its modules moved (tests/fixtures, pickled by the old flat layout)
still loads, completes and validates for `sweeper resume`."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweeper import Sweep
from sweeper.compat import run_config_of, tune_config_of
from sweeper.definition import TPE, Quick
from sweeper.driver.loader import load_sweep
from sweeper.driver.resume import SWEEP_FILE, SweepState, recorded_sweep
from sweeper.kinds import complete
from sweeper.search.tuner import build_searcher
from trainables.config import GANConfig
from trainables.training.gan import train_gan

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
OLD_WGANGP = FIXTURES / "old_layout_wgangp.py"  # search_spaces/wgangp.py when the wgangp pickles were made
SPACES = sorted((ROOT / "search_spaces").glob("*.py")) + sorted((ROOT / "search_spaces" / "seeds").glob("seed*.py"))


@pytest.mark.parametrize("file", SPACES, ids=lambda p: p.name)
def test_a_search_space_file_imports_neither_ray_nor_torch(file):
    # A fresh interpreter: what importing the file itself pulls in. Seed files name ray.tune domains
    # (their own `from ray import tune`), so for them only torch is checked.
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('space', {str(file)!r})\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "print(sorted(m for m in ('ray', 'torch', 'mlflow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=file.parent, check=True)
    imported = eval(out.stdout.strip())
    own_ray = "from ray import" in file.read_text()
    assert imported == (["ray"] if own_ray else []), (file.name, imported)


def _state(folder: Path) -> SweepState:
    return SweepState(str(folder), "wgangp", "search_spaces/wgangp.py", True, "interrupted", "2026-12-01T00:00:00",
                      "sqlite:///unused.db", "1", "run")


def test_a_sweep_pickled_by_the_old_layout_resumes_as_the_same_sweep(tmp_path):
    shutil.copy(FIXTURES / "old_layout_wgangp_sweep.pkl", tmp_path / SWEEP_FILE)
    old = recorded_sweep(_state(tmp_path))
    assert type(old) is Sweep and type(old.searcher) is TPE and type(old.quick) is Quick
    assert "sweeper.spec" not in sys.modules and "sweeper.space" not in sys.modules  # the stand-ins are gone
    # The same sweep as its file resolves to today (the fixture was `wgangp.py --quick`, kept as it was),
    # under the --quick budget it was recorded with: the GAN's quick sample counts have changed since
    # (ref_samples and final_fid_samples halved: two halves of the real images, two final draws).
    today = load_sweep(OLD_WGANGP).with_(quick=old.quick).resolve(quick=True)
    assert old.config == today.config and old.warm_points == today.warm_points
    assert (old.name, old.metric, old.mode, old.num_samples, old.trainable) == ("wgangp", "fid", "min", 6, train_gan)
    sweep = complete(old).validate()
    # Its define-by-run space (pickled by value, calling the old sweeper.space.suggest_optimizer) runs.
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    sweep.space(trial)
    assert {"optimizer", "g_lr", "d_lr", "z_dim", "g_norm", "d_norm"} <= set(trial.params)
    assert build_searcher(sweep)._points_to_evaluate[:len(today.warm_points)] == today.warm_points


def test_a_dict_space_sweep_pickled_by_the_old_layout_loads(tmp_path):
    shutil.copy(FIXTURES / "old_layout_seed001_sweep.pkl", tmp_path / SWEEP_FILE)
    old = complete(recorded_sweep(_state(tmp_path))).validate()
    assert isinstance(old.config, GANConfig) and old.config.num_evals == 3
    assert sorted(old.space) == ["d_dropout", "d_lr", "g_lr", "instance_noise", "label_smoothing", "lr_schedule"]
    assert old.searched_keys() == set(old.space) and len(old.warm_points) == 1


def test_a_search_space_file_builds_a_pure_sweep_that_its_kind_completes():
    bare = Sweep("s", GANConfig())
    assert (bare.trainable, bare.metric, bare.mode, bare.quick) == (None, None, None, None)
    done = complete(bare)
    assert (done.trainable, done.metric, done.mode) == (train_gan, "fid", "min") and done.quick.num_samples == 6
    own = complete(Sweep("s", GANConfig(), metric="kid", mode="min", quick=Quick(num_samples=2)))
    assert (own.metric, own.quick.num_samples) == ("kid", 2)  # what the file set stays
    assert complete(done) == done
    assert json.dumps(done.fixed_config()) and "g_lr" in done.fixed_config()


def test_a_tune_experiment_saved_by_the_old_layout_restores(tmp_path):
    # tuner.pkl as Tune wrote it for an old-layout sweep (searcher, scheduler, console callbacks by
    # their old module names); the driver's restore goes through sweeper.driver.moved.
    from ray import tune

    from sweeper.driver.moved import old_module_names
    from sweeper.search import SweepSearch
    from sweeper.search.console import EvalLines
    from sweeper.search.scheduler import WarmStartASHA
    from sweeper.trial import run_trial

    shutil.copy(FIXTURES / "old_layout_wgangp_tuner.pkl", tmp_path / "tuner.pkl")
    with old_module_names():
        tuner = tune.Tuner.restore(str(tmp_path), tune.with_resources(run_trial, {"cpu": 1}))
    tune_config = tune_config_of(tuner)
    assert type(tune_config.search_alg) is SweepSearch and type(tune_config.scheduler) is WarmStartASHA
    assert any(type(c) is EvalLines for c in run_config_of(tuner).callbacks)
    today = load_sweep(OLD_WGANGP).resolve(quick=True)
    assert tune_config.search_alg._points_to_evaluate == today.warm_points
