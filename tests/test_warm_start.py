"""A warm start that is a whole config runs as the whole published config: its non-searched values
that differ from the sweep's config are its trial's fixed overrides (in that trial's Tune config
only, applied and logged by the trial), what is prepared once per sweep stays the sweep's, and a
dict warm start naming a prepared key is an error. Each warm start's neighbours (its learning rates
x1/2 and x2, in range) follow it, with its overrides, as searched trials (real Optuna; no training)."""
import shutil
from pathlib import Path

import pytest
from ray import tune

from sweeper import TPE, Sweep, SweepError
from sweeper.compat import optuna_trials_of, tune_config_of
from sweeper.definition.space import same_params, suggest_optimizer
from sweeper.kinds import complete, kind_of
from sweeper.search.searcher import STARTUP, WARM_NEIGHBOUR, WARM_START
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
    assert optuna_trials_of(searcher)["t0"].params == sweep.warm_points[0]
    for trial_id in ("t0", "t1"):
        searcher.on_trial_complete(trial_id, {sweep.objective: 1.0, "eval_period": sweep.config.num_evals})
    later = [searcher.suggest(f"t{i}") for i in range(2, 5)]
    # 6 trials: the 2 warm starts take their third; no neighbour (test_the_searcher_proposes_...).
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
    # The summary finds which warm start a trial was from the searcher's record; each warm start's
    # Tune config is its published changes, a TPE proposal none of them.
    assert searcher.warm_starts() == {"t0": 0, "t1": 1}
    changes = sweep.warm_changes
    assert [[i for i, c in enumerate(changes) if same_params(config, c)] for config in (first, second, later[0])] \
        == [[0], [1], []]


def test_the_summary_names_the_baseline_trial_and_what_it_ran():
    import pandas as pd

    sweep = _sweep()
    # Which warm start a trial is: the searcher's record (trial_table's warm_start_index column).
    rows = [{"trial_id": "a", "warm_start": True, "warm_start_index": 0, "fid_final": 30.0,
             **{f"config.{k}": v for k, v in sweep.warm_changes[0].items()}},
            {"trial_id": "b", "warm_start": True, "warm_start_index": 1, "fid_final": 40.0, "config.g_lr": 3e-4,
             "config.d_norm": "none"},
            {"trial_id": "c", "warm_start": False, "warm_start_index": None, "fid_final": 20.0, "config.g_lr": 5e-4,
             "config.d_norm": "none"}]
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
    searcher = tune_config_of(tuner).search_alg
    assert searcher._warm_overrides == ()
    # Nor neighbours: its enqueued points are warm starts, with no overrides.
    assert searcher._n_neighbours == 0 and searcher._overrides(0) == {}


def _optimizer_space(trial):
    suggest_optimizer(trial, ["adam", "sgd"], lr=(1e-5, 1e-3))


def test_the_neighbours_of_a_whole_config_scale_both_learning_rates_and_keep_its_overrides():
    published = PUBLISHED.replace(g_lr=1e-4, d_lr=4e-4, optimizer="adam")
    at_the_top = {"optimizer": "sgd", "g_lr": 1e-3, "d_lr": 2e-4, "momentum": 0.5}
    at_the_corner = {"optimizer": "sgd", "g_lr": 1e-3, "d_lr": 1e-3, "momentum": 0.5}
    sweep = _sweep(space=_optimizer_space, warm_start=[published, at_the_top, at_the_corner])
    fixed = {"d_norm": "instance", "lr_schedule": "linear-decay", "batch_size": 128}
    assert sweep.warm_overrides[0] == fixed
    adam = {"optimizer": "adam", "beta1": published.beta1, "beta2": published.beta2}
    assert sweep.neighbour_points == [
        {**adam, "g_lr": 5e-5, "d_lr": 2e-4}, {**adam, "g_lr": 2e-4, "d_lr": 8e-4},
        # x2 puts g_lr at the range's top, d_lr still moves: a neighbour.
        {"optimizer": "sgd", "g_lr": 5e-4, "d_lr": 1e-4, "momentum": 0.5},
        {"optimizer": "sgd", "g_lr": 1e-3, "d_lr": 4e-4, "momentum": 0.5},
        # At the top in both, x2 is the warm start itself: only x0.5.
        {"optimizer": "sgd", "g_lr": 5e-4, "d_lr": 5e-4, "momentum": 0.5}]
    assert sweep.neighbour_overrides == [fixed, fixed, {}, {}, {}]
    assert [(n.of, n.factor) for n in sweep.neighbours] == [(0, 0.5), (0, 2.0), (1, 0.5), (1, 2.0), (2, 0.5)]
    assert sweep.neighbours[0].text() == "warm-start neighbour of [0]: g_lr=5e-05, d_lr=0.0002 (x0.5)"
    # Neighbours are searched trials for the final evaluation: no warm start has their params.
    assert not any(same_params({**n.params, **n.overrides}, point) for n in sweep.neighbours for point in sweep.warm_points)
    assert not any(same_params({**n.params, **n.overrides}, c) for n in sweep.neighbours for c in sweep.warm_changes)


def test_only_learning_rate_ranges_are_scaled():
    # A learning rate searched as a choice is no range, lr_gamma no learning rate: no neighbours.
    space = {"g_lr": tune.choice([1e-4, 2e-4]), "lr_gamma": tune.uniform(0.1, 0.9)}
    sweep = _sweep(config=CONFIG.replace(lr_schedule="step"), space=space, warm_start=[{"g_lr": 1e-4, "lr_gamma": 0.2}])
    assert sweep.neighbours == []
    assert _sweep(warm_neighbours=()).neighbours == []


def test_the_searcher_proposes_the_warm_starts_then_their_neighbours_with_their_overrides():
    sweep = _sweep(num_samples=18)  # a third, 6, less the 2 warm starts: 4 neighbours, two of each
    searcher = build_searcher(sweep)
    searcher.set_search_properties(sweep.objective, sweep.mode, dict(sweep.space))
    configs = [searcher.suggest(f"t{i}") for i in range(7)]
    assert [searcher.proposed_by[f"t{i}"] for i in range(7)] == [WARM_START] * 2 + [WARM_NEIGHBOUR] * 4 + [STARTUP]
    fixed = sweep.warm_overrides[0]
    assert configs[2:6] == [{"g_lr": 5e-5, "d_norm": "instance", **fixed}, {"g_lr": 2e-4, "d_norm": "instance", **fixed},
                            {"g_lr": 1.5e-4, "d_norm": "none"}, {"g_lr": 6e-4, "d_norm": "none"}]
    # Optuna's trials know the searched params alone.
    assert optuna_trials_of(searcher)["t2"].params == {"g_lr": 5e-5, "d_norm": "instance"}
    assert searcher.suggest("t2") == configs[2]  # asked again, the same config


@pytest.mark.parametrize("num_samples, configs, enqueued", [(6, None, 0), (9, None, 1), (12, None, 2), (18, None, 4),
                                                             (30, None, 4), (6, 12, 2), (12, 6, 0)])
def test_warm_starts_and_neighbours_take_at_most_a_third_of_the_configurations(num_samples, configs, enqueued):
    # Two warm starts: the neighbours fill what they leave of a third of the configurations (a
    # budget's plan passes its own count as `configs`).
    sweep = _sweep(num_samples=num_samples)
    assert len(sweep.neighbours) == 4
    searcher = build_searcher(sweep, configs=configs)
    assert searcher._points_to_evaluate == sweep.warm_points + sweep.neighbour_points[:enqueued]
    assert searcher._neighbour_overrides == tuple(sweep.neighbour_overrides[:enqueued])


@pytest.mark.parametrize("factors, shown", [((0.5, 1.0), "1.0"), ((0,), "0"), ((-2.0,), "-2.0"),
                                            ((float("inf"),), "inf"), (("x2",), "'x2'"), (2.0, "2.0")])
def test_a_bad_neighbour_factor_is_a_one_line_error(factors, shown):
    with pytest.raises(SweepError, match=r"^warm_neighbours: ") as caught:
        _sweep(warm_neighbours=factors)
    assert shown in str(caught.value) and "\n" not in str(caught.value)
