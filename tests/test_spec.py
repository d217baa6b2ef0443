"""The Sweep spec, --set overrides and the CLI's handling of bad input (no Ray started)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ray import tune

from sweeper import Sweep, SweepError
from sweeper.definition import parse_overrides
from sweeper.driver.loader import load_sweep
from sweeper.kinds import complete
from trainables.config import GANConfig

REPO = Path(__file__).resolve().parents[1]
WGANGP = REPO / "search_spaces" / "wgangp.py"


def test_overrides_are_typed_from_the_config():
    assert parse_overrides(["z_dim=32", "g_lr=1e-3", "loss=bce"], GANConfig) == {"z_dim": 32, "g_lr": 1e-3, "loss": "bce"}


@pytest.mark.parametrize("item, message", [
    ("nope=1", "--set nope: unknown config key"),
    ("z_dim=abc", "--set z_dim=abc: expected int"),
    ("z_dim", "expected key=value"),
])
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises(SweepError, match=message):
        parse_overrides([item], GANConfig)


def test_quick_changes_only_the_budget():
    sweep = load_sweep(WGANGP)
    quick = sweep.resolve(quick=True)
    assert quick.config.resolution == 32 and quick.num_samples < sweep.num_samples
    assert quick.config.loss == sweep.config.loss == "wgan-gp"
    assert quick.space == sweep.space and quick.warm_points == sweep.warm_points
    # Its warm starts are whole published configs: --quick shrinks their budget as it does the sweep's
    # config (the command line wins over the file), and changes nothing else of them.
    assert len(quick.warm_start) == len(sweep.warm_start) == 2
    for before, after in zip(sweep.warm_start, quick.warm_start):
        assert isinstance(before, GANConfig) and after == before.replace(**sweep.quick.config)
        assert after.resolution == 32 and after.num_evals == quick.config.num_evals


def test_space_values_are_validated_before_anything_runs():
    base = GANConfig(loss="wgan-gp")
    with pytest.raises(SweepError, match="space.d_norm: d_norm: 'batch' is not allowed"):
        complete(Sweep("s", base, space={"d_norm": tune.choice(["instance", "batch"])})).validate()
    with pytest.raises(SweepError, match="space.lr: unknown config key"):
        complete(Sweep("s", base, space={"lr": tune.loguniform(1e-4, 1e-3)})).validate()
    with pytest.raises(SweepError, match="space.g_lr: g_lr: must be in"):
        complete(Sweep("s", base, space={"g_lr": tune.uniform(0.5, 2.0)})).validate()
    with pytest.raises(SweepError, match="warm_start\\[0\\]: g_lr=0.01 is outside the search space"):
        complete(Sweep("s", base, space={"g_lr": tune.loguniform(1e-4, 1e-3)}, warm_start=[{"g_lr": 1e-2}])).validate()
    with pytest.raises(SweepError, match="warm_start\\[0\\]: d_norm='none' is outside the search space"):
        complete(Sweep("s", base, space={"d_norm": tune.choice(["layer"])}, warm_start=[{"d_norm": "none"}])).validate()
    with pytest.raises(SweepError, match="warm_start\\[0\\]: key 'beta1' is not in the search space"):
        complete(Sweep("s", base, space={"g_lr": tune.loguniform(1e-4, 1e-3)}, warm_start=[{"beta1": 0.0}])).validate()


def _conditional(trial):
    optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
    if optimizer == "adam":
        trial.suggest_float("beta1", 0.0, 0.9)
    else:
        trial.suggest_float("momentum", 0.0, 0.9)


def test_define_by_run_spaces_are_validated_on_every_branch():
    base = GANConfig(loss="wgan-gp")
    sweep = complete(Sweep("s", base, space=_conditional)).validate()
    assert sweep.searched_keys() == {"optimizer", "beta1", "momentum"}

    def bad_branch(trial):
        if trial.suggest_categorical("loss", ["wgan-gp", "bce"]) == "wgan-gp":
            trial.suggest_categorical("d_norm", ["layer", "batch"])
    with pytest.raises(SweepError, match="space draw .*d_norm: 'batch' is not allowed with loss 'wgan-gp'"):
        complete(Sweep("s", base, space=bad_branch)).validate()

    def returns_constants(trial):
        trial.suggest_float("g_lr", 1e-4, 1e-3)
        return {"z_dim": 64}
    with pytest.raises(SweepError, match="must return None"):
        complete(Sweep("s", base, space=returns_constants)).validate()


def test_warm_starts_are_points_of_the_space():
    base = GANConfig(loss="wgan-gp")
    # A whole config (a seed project's) stands for the values of the keys its branch searches.
    sweep = complete(Sweep("s", base, space=_conditional, warm_start=[base.replace(optimizer="sgd", momentum=0.5)]))
    assert sweep.validate().warm_start_params(0) == {"optimizer": "sgd", "momentum": 0.5}
    with pytest.raises(SweepError, match="warm_start\\[0\\]: momentum=0.95 is outside the search space"):
        sweep.with_(warm_start=[{"optimizer": "sgd", "momentum": 0.95}]).validate()
    with pytest.raises(SweepError, match="warm_start\\[0\\]: key 'beta1' is never suggested"):
        sweep.with_(warm_start=[{"optimizer": "sgd", "momentum": 0.5, "beta1": 0.0}]).validate()
    with pytest.raises(SweepError, match="warm_start\\[0\\]: .*momentum"):
        sweep.with_(warm_start=[{"optimizer": "sgd"}]).validate()


def test_setting_a_searched_key_is_refused():
    with pytest.raises(SweepError, match="--set g_lr: the key is searched"):
        load_sweep(WGANGP).resolve(overrides=["g_lr=1e-3"])


def _cli(*args, cwd):
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, fragment", [
    (["--set", "nope=1"], "nope"),
    (["--set", "z_dim=abc"], "z_dim=abc"),
    (["--set", "loss=wasserstein"], "wasserstein"),
    (["--data", "/no/such/folder"], "/no/such/folder"),
    (["--num-samples", "0"], "num_samples"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, fragment):
    result = _cli("run", str(WGANGP), "--quick", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeper: error:") and fragment in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # no sweeps/, no store, nothing half-written


def test_cli_missing_file_is_exit_2(tmp_path):
    result = _cli("run", "search_spaces/nope.py", cwd=tmp_path)
    assert result.returncode == 2 and "search_spaces/nope.py" in result.stderr


# `python -m sweeper` with a tripwire on Ray's start (as tests/test_bad_input.py's `workdir` sets in
# process): ray.init replaced before sweeper is imported ends the process with exit 97.
RAY_TRIPWIRE = """
import os, runpy, sys
import ray

def ray_started(*args, **kwargs):
    print("tripwire: ray.init was called", file=sys.stderr, flush=True)
    os._exit(97)  # not an exception that a caller could catch and carry on after

ray.init = ray_started
sys.argv[0] = "sweeper"
runpy.run_module("sweeper", run_name="__main__", alter_sys=True)
"""


def test_dry_run_prints_the_resolved_sweep_without_starting_ray(tmp_path):
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", RAY_TRIPWIRE, "run", str(WGANGP), "--quick", "--set", "seed=3",
                             "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "tripwire" not in result.stderr, result.stderr
    assert "sweep wgangp: 6 trials" in result.stdout
    assert "seed = 3" in result.stdout and "resolution = 32" in result.stdout
    assert "define-by-run space(): beta1, beta2, d_lr, d_norm, diffaugment, ema_decay, g_lr" in result.stdout
    assert "{'optimizer': 'adam', 'g_lr': 8e-05, 'd_lr': 0.0001" in result.stdout  # seed 000 warm start
    # 6 trials: the 2 warm starts take the third that warm starts and neighbours may have.
    assert "warm-start neighbour" not in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_trials_get_a_gpu_fraction_only_where_gpus_exist():
    sweep = load_sweep(WGANGP)
    assert sweep.resources.per_trial(0) == {"cpu": 1.0}
    assert sweep.resources.per_trial(8) == {"cpu": 1.0, "gpu": 0.25}


def _searches_resolution(trial):
    trial.suggest_categorical("resolution", [32, 64])


@pytest.mark.parametrize("space, key", [
    ({"resolution": tune.choice([32, 64])}, "resolution"),
    ({"data": tune.choice(["toy-faces", "afhq-cat"])}, "data"),
    (_searches_resolution, "resolution"),
])
def test_keys_that_define_the_data_cannot_be_searched(space, key):
    with pytest.raises(SweepError, match=f"space.{key}: is prepared once per sweep"):
        complete(Sweep("s", GANConfig(), space=space)).validate()


def test_cli_refuses_a_searched_resolution_with_exit_2(tmp_path):
    space_file = tmp_path / "space.py"
    space_file.write_text("from ray import tune\nfrom sweeper import Sweep\nfrom trainables.config import GANConfig\n"
                          "sweep = Sweep('s', GANConfig(), space={'resolution': tune.choice([32, 64])})\n")
    result = _cli("run", str(space_file), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sweeper: error: space.resolution: is prepared once per sweep (data, statistics, generators) and cannot "
        "be searched; fix it in the sweep's config (or --data / --set resolution=...) and run one sweep per value"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.py"]


@pytest.mark.parametrize("changes, message", [
    (dict(config=GANConfig(eval_extractor="fast")), "config: eval_extractor: unknown value 'fast' "
                                                    r"\(choose from auto, standard, proxy\)"),
    (dict(max_concurrent=0), "max_concurrent: must be >= 1"),
    (dict(config={"lr": 1e-3}), "config: expected a frozen dataclass deriving from trainables.config.Config"),
])
def test_sweep_level_knobs_are_validated(changes, message):
    with pytest.raises(SweepError, match=message):
        complete(Sweep("s", **{"config": GANConfig(), **changes})).validate()


def test_quick_shrinks_the_final_evaluation_too():
    quick = load_sweep(WGANGP).resolve(quick=True)
    # 128 generated images per final draw (fid_select, then fid_final) against 256 real images per half.
    assert quick.final.top_k == 1 and quick.config.final_fid_samples == 128 and quick.config.ref_samples == 256
    assert load_sweep(WGANGP).final.top_k == 3 and GANConfig().final_fid_samples == 10_000
