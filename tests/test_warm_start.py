"""A warm start that is a whole config runs as the whole published config: its non-searched values
that differ from the sweep's config are its trial's fixed overrides (in that trial's Tune config
only, applied and logged by the trial), what is prepared once per sweep stays the sweep's, and a
dict warm start naming a prepared key is an error (real Optuna; no training)."""
import shutil
from pathlib import Path

import pytest
from ray import tune

from sweeper import TPE, Sweep, SweepError
from sweeper.kinds import complete, kind_of
from sweeper.search.searcher import STARTUP, WARM_START
from sweeper.search.searcher import TPE as PROPOSED_BY_TPE
from sweeper.search.tuner import build_searcher
from sweeper.tracking.outcomes import baseline_trial
from trainables.classifier.config import ClassifierConfig
from trainables.config import GANConfig
from trainables.seeds import seed001_dcgan64_tricks

CONFIG = GANConfig(resolution=64, batch_size=64, num_evals=3, steps_per_eval=10, fid_samples=64)
# A published config: searched g_lr and d_norm, its own batch size and LR schedule, the sweep's d_lr
# and z_dim, and values that stay the sweep's (prepared resolution and data, budget, seed).
PUBLISHED = CONFIG.replace(g_lr=1e-4, d_norm="instance", batch_size=128, lr_schedule="linear-decay",
                           resolution=32, data="toy-faces:cat", num_evals=20, steps_per_eval=500,
                           fid_samples=5000, seed=7)
SPACE = {"g_lr": tune.loguniform(1e-5, 1e-3), "d_norm": tune.choice(["none", "instance"])}


def _sweep(**changes) -> Sweep:
    base = dict(name="warm", config=CONFIG, space=SPACE, warm_start=[PUBLISHED, {"g_lr": 3e-4, "d_norm": "none"}],
                num_samples=6, searcher=TPE(n_startup_trials=2))
    return complete(Sweep(**{**base, **changes})).validate()


def test_a_whole_config_fixes_its_differing_non_searched_keys_and_nothing_else():
    sweep = _sweep()
    assert sweep.warm_points == [{"g_lr": 1e-4, "d_norm": "instance"}, {"g_lr": 3e-4, "d_norm": "none"}]
    assert sweep.warm_overrides == [{"lr_schedule": "linear-decay", "batch_size": 128}, {}]
    assert sweep.warm_start_text(0) == (
        "fixed for it: lr_schedule='linear-decay', batch_size=128; the sweep's own: data='toy-faces' (not "
        "'toy-faces:cat'), resolution=64 (not 32), steps_per_eval=10 (not 500), num_evals=3 (not 20), "
        "fid_samples=64 (not 5000), seed=0 (not 7)")
    assert sweep.warm_start_text(1) == ""


def test_a_seed_in_a_define_by_run_space_keeps_its_tricks():
    def space(trial):
        trial.suggest_categorical("optimizer", ["adam", "sgd"])
        trial.suggest_float("g_lr", 1e-5, 1e-3, log=True)
        trial.suggest_categorical("loss", ["bce", "lsgan"])
        trial.suggest_float("d_dropout", 0.0, 0.5)

    # The sweep's config has an EMA start; the seed has no EMA, so that key is no override of it.
    sweep = _sweep(config=CONFIG.replace(ema_start_kimg=320.0), space=space, warm_start=[seed001_dcgan64_tricks])
    assert sweep.warm_points == [{"optimizer": "adam", "g_lr": 2e-4, "loss": "bce", "d_dropout": 0.3}]
    assert sweep.warm_overrides == [{"z_dim": 100, "d_norm": "batch", "lr_schedule": "linear-decay", "batch_size": 128,
                                     "label_smoothing": 0.1, "instance_noise": 0.1}]


def test_the_command_line_changes_a_whole_config_warm_start_too():
    sweep = _sweep()
    # --quick's narrow nets and batch, --set's value: the warm start's own differing values give way.
    quick = sweep.resolve(quick=True, overrides=["lr_schedule=cosine"])
    assert quick.warm_overrides == [{}, {}]
    assert quick.trial_config(quick.warm_changes[0]).g_width == quick.config.g_width == 16
    assert quick.warm_points == sweep.warm_points


def test_a_dict_warm_start_naming_a_prepared_key_is_an_error():
    with pytest.raises(SweepError, match=r"^warm_start\[1\]\.resolution: 128 \(the sweep's 64\) is prepared once "
                                         r"per sweep .* cannot vary per trial"):
        _sweep(warm_start=[PUBLISHED, {"g_lr": 1e-4, "d_norm": "none", "resolution": 128}])


def test_a_warm_start_of_another_config_class_is_an_error():
    with pytest.raises(SweepError, match=r"^warm_start\[0\]: a ClassifierConfig, but the sweep's config is a GANConfig"):
        _sweep(warm_start=[ClassifierConfig()])


def test_a_warm_start_validates_with_its_overrides():
    # Batch norm in a WGAN-GP critic: the override, not the searched point, is illegal.
    config = CONFIG.replace(loss="wgan-gp")
    with pytest.raises(SweepError, match=r"^warm_start\[0\]: d_norm: 'batch' is not allowed with loss 'wgan-gp'"):
        _sweep(config=config, space={"g_lr": SPACE["g_lr"]}, warm_start=[config.replace(d_norm="batch")])


def test_the_searcher_gives_the_overrides_to_the_warm_start_trial_only():
    sweep = _sweep()
    searcher = build_searcher(sweep)
    searcher.set_search_properties(sweep.objective, sweep.mode, dict(sweep.space))
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    assert first == {**sweep.warm_points[0], **sweep.warm_overrides[0]}
    assert second == sweep.warm_points[1]
    assert searcher.suggest("t0") == first  # asked again (Tune may), the same config
    # Optuna's trial knows only the searched params.
    assert searcher._ot_trials["t0"].params == sweep.warm_points[0]
    for trial_id in ("t0", "t1"):
        searcher.on_trial_complete(trial_id, {sweep.objective: 1.0, "eval_period": sweep.config.num_evals})
    later = [searcher.suggest(f"t{i}") for i in range(2, 5)]
    assert [searcher.proposed_by[f"t{i}"] for i in range(5)] == [WARM_START, WARM_START] + [PROPOSED_BY_TPE] * 3
    assert all(set(config) == set(SPACE) for config in later), later
    assert STARTUP not in searcher.proposed_by.values()

    # The trial applies its Tune config to the sweep's as run_trial does: the published values, but
    # the sweep's resolution, data, budget and seed; its run logs them as params.
    cfg = sweep.config.replace(**first).validate()
    assert (cfg.batch_size, cfg.lr_schedule, cfg.g_lr, cfg.d_norm) == (128, "linear-decay", 1e-4, "instance")
    assert (cfg.resolution, cfg.data, cfg.num_evals, cfg.seed) == (64, "toy-faces", 3, 0)
    params = kind_of(cfg).run_params(cfg)
    assert params["batch_size"] == 128 and params["lr_schedule"] == "linear-decay"
    # The summary finds which warm start the trial was from its config.
    assert sweep.warm_start_index(first) == 0 and sweep.warm_start_index(second) == 1
    assert sweep.warm_start_index(later[0]) is None


def test_the_summary_names_the_baseline_trial_and_what_it_ran():
    import pandas as pd

    sweep = _sweep()
    rows = [{"trial_id": "a", "warm_start": True, "fid_final": 30.0, **{f"config.{k}": v for k, v in
                                                                      sweep.warm_changes[0].items()}},
            {"trial_id": "b", "warm_start": True, "fid_final": 40.0, "config.g_lr": 3e-4, "config.d_norm": "none"},
            {"trial_id": "c", "warm_start": False, "fid_final": 20.0, "config.g_lr": 5e-4, "config.d_norm": "none"}]
    trial, text = baseline_trial(sweep, pd.DataFrame(rows), "fid_final", "min")
    assert trial == "a"
    assert text.startswith("warm_start[0] {'g_lr': 0.0001, 'd_norm': 'instance'}; fixed for it: lr_schedule=")
    metrics, lines = kind_of(sweep.config).summarise(sweep, pd.DataFrame(rows))
    assert lines[0].startswith("hand-tuned baseline (warm start): fid_final 30.00 (trial a); ")
    assert lines[1] == f"  trial a = {text}"


def test_a_searcher_pickled_before_overrides_resumes_without_them(tmp_path):
    from sweeper.driver.moved import old_module_names
    from sweeper.trial import run_trial

    fixtures = Path(__file__).parent / "fixtures"
    shutil.copy(fixtures / "old_layout_wgangp_tuner.pkl", tmp_path / "tuner.pkl")
    with old_module_names():
        tuner = tune.Tuner.restore(str(tmp_path), tune.with_resources(run_trial, {"cpu": 1}))
    searcher = tuner._local_tuner._tune_config.search_alg
    assert searcher._warm_overrides == ()
