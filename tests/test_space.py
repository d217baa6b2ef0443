"""sweeper.definition.space called directly (no Sweep, no Ray started): the values validation sees
of each ray.tune domain, which warm starts lie inside a space, the seeded draws that validate a
define-by-run space, the ranges a neighbour may move in, and what suggest_optimizer searches."""
import math
import types
import warnings

import numpy as np
import optuna
import pytest
from ray import tune

from sweeper.definition.space import (
    SpaceError,
    always_searched_keys,
    float_ranges,
    same_params,
    searched_keys,
    space_samples,
    suggest_optimizer,
    warm_start_params,
)


def _seen(space) -> list[dict]:
    return [params for _, params in space_samples(space)]


def _one_float(trial):
    trial.suggest_float("x", 0.0, 1.0)


def _conditional(trial):
    if trial.suggest_categorical("optimizer", ["adam", "sgd"]) == "adam":
        trial.suggest_float("beta1", 0.0, 0.9)
    else:
        trial.suggest_float("momentum", 0.0, 0.9)


def test_a_float_range_is_seen_at_both_bounds_even_written_with_ints():
    # tune.uniform(0, 1) keeps the ints 0 and 1 and draws floats up to 1; randint's upper is exclusive.
    assert _seen({"beta1": tune.uniform(0, 1)}) == [{"beta1": 0}, {"beta1": 1}]
    assert _seen({"beta1": tune.uniform(0.5, 1)}) == [{"beta1": 0.5}, {"beta1": 1}]
    assert _seen({"n_critic": tune.randint(1, 6)}) == [{"n_critic": 1}, {"n_critic": 5}]
    assert _seen({"g_lr": tune.loguniform(1e-5, 1e-3)}) == [{"g_lr": 1e-5}, {"g_lr": 1e-3}]


def test_a_warm_start_may_lie_on_either_bound_but_not_on_randints_exclusive_upper():
    space = {"g_lr": tune.loguniform(1e-4, 1e-3), "n_critic": tune.randint(1, 6), "beta1": tune.uniform(0, 1)}
    assert warm_start_params(space, {"g_lr": 1e-4, "n_critic": 5, "beta1": 0.5}) == {"g_lr": 1e-4, "n_critic": 5,
                                                                                   "beta1": 0.5}
    assert warm_start_params(space, {"g_lr": 1e-3, "n_critic": 1, "beta1": 1}) == {"g_lr": 1e-3, "n_critic": 1,
                                                                                 "beta1": 1}
    with pytest.raises(SpaceError, match=r"^n_critic=6 is outside the search space$"):
        warm_start_params(space, {"n_critic": 6})


def test_a_quantized_randint_includes_its_upper_bound_as_ray_tune_draws_it():
    # qrandint/qlograndint draw their upper bound (a multiple of q); randint/lograndint never do.
    for inclusive in (tune.qrandint(2, 10, 2), tune.qlograndint(2, 10, 2)):
        assert 10 in set(inclusive.sample(size=400))  # ray.tune's own behaviour, the reference
        assert _seen({"n_critic": inclusive}) == [{"n_critic": 2}, {"n_critic": 10}]
        assert warm_start_params({"n_critic": inclusive}, {"n_critic": 10}) == {"n_critic": 10}
    for exclusive in (tune.randint(2, 10), tune.lograndint(2, 10)):
        assert 10 not in set(exclusive.sample(size=400))
        assert _seen({"n_critic": exclusive}) == [{"n_critic": 2}, {"n_critic": 9}]


def test_a_warm_start_in_a_space_that_can_produce_nothing_names_the_key():
    with pytest.raises(SpaceError, match=r"^space\.loss: tune\.choice\(\[\]\) has nothing to choose from$"):
        warm_start_params({"loss": tune.choice([])}, {"loss": "bce"})


def test_an_unbounded_randint_is_refused_with_its_key_and_bounds():
    # ray.tune accepts randint(1, inf); Optuna could not draw from it.
    with pytest.raises(SpaceError, match=r"^space\.n_critic: bounds must be finite, got \[1, inf\]$"):
        _seen({"n_critic": tune.randint(1, math.inf)})


@pytest.mark.parametrize("value, shown", [(1e-3, "0.001"), ("bce", "'bce'"),
                                          (types.SimpleNamespace(lower=1e-4), r"namespace\(lower=0.0001\)")])
def test_a_value_that_is_no_ray_tune_domain_is_refused_with_its_key(value, shown):
    # A constant belongs in the sweep's config; a str has .lower and .upper (methods), yet is no range.
    with pytest.raises(SpaceError, match=rf"^space\.g_lr: expected a ray\.tune domain \(tune\.choice, "
                                         rf"tune\.loguniform, \.\.\.\), got {shown}$"):
        _seen({"g_lr": value})


def test_a_define_by_run_space_is_validated_on_seed_0s_random_draws():
    # Optuna's RandomSampler(seed=0) draws from numpy's RandomState(0): the same 64 values every run.
    drawn = [params["x"] for _, params in space_samples(_one_float)]
    assert drawn == pytest.approx(np.random.RandomState(0).uniform(0.0, 1.0, 64).tolist(), rel=1e-12)


def test_validating_a_define_by_run_space_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert searched_keys(_conditional) == {"optimizer", "beta1", "momentum"}


def test_the_keys_every_trial_has_leave_a_branchs_keys_out():
    assert always_searched_keys(_conditional) == {"optimizer"}
    assert always_searched_keys({"g_lr": tune.loguniform(1e-5, 1e-3), "d_norm": tune.choice(["none"])}) == \
        {"g_lr", "d_norm"}


def test_a_define_by_run_space_returning_values_is_refused_with_the_fix():
    def returns_constants(trial):
        trial.suggest_float("g_lr", 1e-4, 1e-3)
        return {"z_dim": 64}
    with pytest.raises(SpaceError, match=r"^a define-by-run space must return None \(put fixed values in the "
                                         r"sweep's config\)$"):
        searched_keys(returns_constants)


def test_a_warm_start_outside_a_define_by_run_space_is_an_error_not_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SpaceError, match=r"^x=2\.0 is outside the search space \(FloatDistribution"):
            warm_start_params(_one_float, {"x": 2.0})


def test_a_define_by_run_spaces_other_warnings_reach_the_user():
    # Only Optuna's out-of-range UserWarning is silenced: not its other ones, not a space's own.
    def space(trial):
        trial.suggest_float("x", 0.0, 1.0, step=0.3)
        warnings.warn("x is out of the range the paper tried", RuntimeWarning, stacklevel=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert float_ranges(space, {"x": 0.3}) == {"x": (0.0, pytest.approx(0.9), 0.3)}
    assert sorted((w.category.__name__, str(w.message).split(",")[0]) for w in caught) == [
        ("RuntimeWarning", "x is out of the range the paper tried"),
        ("UserWarning", "The distribution is specified by [0.0")]


def test_a_quantized_float_range_keeps_its_step_and_other_domains_are_no_range():
    space = {"beta1": tune.quniform(0.0, 0.9, 0.1), "g_lr": tune.loguniform(1e-5, 1e-3),
             "n_critic": tune.randint(1, 6), "ema_decay": tune.choice([0.99, 0.999])}
    point = {"beta1": 0.5, "g_lr": 1e-4, "n_critic": 2, "ema_decay": 0.99}
    assert float_ranges(space, point) == {"beta1": (0.0, 0.9, 0.1), "g_lr": (1e-5, 1e-3, None)}


def test_same_params_forgives_float_rounding_only():
    assert same_params({"g_lr": 1e-4 * (1 + 1e-12), "loss": "bce", "extra": 1}, {"g_lr": 1e-4, "loss": "bce"})
    assert not same_params({"g_lr": 1e-4 * (1 + 1e-6)}, {"g_lr": 1e-4})
    # Ints compare exactly: 1e9 and 1e9 + 1 are within a relative 1e-9 of each other.
    assert not same_params({"seed": 1_000_000_000}, {"seed": 1_000_000_001})


@pytest.mark.parametrize("optimizer, own", [("adam", {"beta1", "beta2"}), ("adamw", {"beta1", "beta2"}),
                                            ("rmsprop", set()), ("sgd", {"momentum"})])
def test_suggest_optimizer_searches_log_learning_rates_and_only_the_optimizers_own_knobs(optimizer, own):
    trial = optuna.trial.FixedTrial({"optimizer": optimizer, "g_lr": 1e-4, "d_lr": 2e-4, "beta1": 0.5,
                                     "beta2": 0.99, "momentum": 0.9})
    suggest_optimizer(trial)
    assert set(trial.params) == {"optimizer", "g_lr", "d_lr", *own}
    log_lr = optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert trial.distributions["g_lr"] == log_lr and trial.distributions["d_lr"] == log_lr
