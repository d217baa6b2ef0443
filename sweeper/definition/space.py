"""Search spaces: a dict of ray.tune domains, or an Optuna define-by-run function `space(trial)`
(returning None) for conditional hyperparameters (betas only for adam, ...).

Validation sees the values a space can produce before Ray starts: every category and both bounds
of a dict space; for a define-by-run space, a seeded set of random draws (which covers its branches).
A space that can produce nothing (an empty choice, a range whose lower bound is not below its
upper one, a non-finite bound) or a suggest call Optuna refuses is a SpaceError naming the key.
ray.tune itself refuses a log range with a bound <= 0 when the file builds it (the loader then
names the file and line).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import warnings
from typing import Callable, Iterator

import optuna

from sweeper.compat import distribution_contains
from trainables.errors import BadInput

DRAWS = 64  # random draws that validate a define-by-run space


class SpaceError(BadInput):
    pass


def space_samples(space) -> Iterator[tuple[str, dict]]:
    """(where, params) pairs to validate, `where` naming the key or draw for the error message."""
    if callable(space):
        for i, params in enumerate(_draws(space, DRAWS)):
            yield f"space draw {i} {params}", params
        return
    for key, domain in space.items():
        for value in _corner_values(key, domain):
            yield f"space.{key}", {key: value}


def searched_keys(space) -> set[str]:
    if callable(space):
        return set().union(*_draws(space, DRAWS))
    return set(space)


def always_searched_keys(space) -> set[str]:
    """The keys every trial has (a define-by-run space's conditional keys left out)."""
    if callable(space):
        return set.intersection(*(set(d) for d in _draws(space, DRAWS)))
    return set(space)


def warm_start_params(space, point) -> dict:
    """The searched params a warm-start point stands for, as Optuna is to enqueue them.

    `point` is a dict of searched keys, or a whole GANConfig (a seed project's published
    configuration) from which the keys the space searches are taken.
    """
    values = dataclasses.asdict(point) if dataclasses.is_dataclass(point) else dict(point)
    if not callable(space):
        if dataclasses.is_dataclass(point):
            values = {key: values[key] for key in space}
        unknown = sorted(set(values) - set(space))
        if unknown:
            raise SpaceError(f"key {unknown[0]!r} is not in the search space")
        for key, value in values.items():
            if not _inside(key, space[key], value):
                raise SpaceError(f"{key}={value!r} is outside the search space")
        return values
    trial = _fixed_trial(space, values)
    for name, value in trial.params.items():
        distribution = trial.distributions[name]
        if not distribution_contains(distribution, value):
            raise SpaceError(f"{name}={value!r} is outside the search space ({distribution})")
    if not dataclasses.is_dataclass(point):
        unused = sorted(set(values) - set(trial.params))
        if unused:
            raise SpaceError(f"key {unused[0]!r} is never suggested by the search space for this point")
    return dict(trial.params)


def float_ranges(space, params: dict) -> dict[str, tuple[float, float, float | None]]:
    """{key: (low, high, step or None)} of the keys among a point's searched `params` that the space
    searches as a float range (a choice of floats is no range): where a value may move to. A
    define-by-run space is run on the point itself, so the ranges are those of the point's branch."""
    if callable(space):
        distributions = _fixed_trial(space, params).distributions
        return {key: (d.low, d.high, d.step) for key, d in distributions.items()
                if isinstance(d, optuna.distributions.FloatDistribution)}
    return {key: (domain.lower, domain.upper, getattr(domain.sampler, "q", None))
            for key, domain in space.items() if key in params and _is_float_range(domain)}


def same_params(params: dict, point: dict) -> bool:
    """Whether `params` hold every key of `point` with the same value (floats to 1e-9: a value that
    went through Optuna and back)."""
    def same(a, b):
        return math.isclose(a, b, rel_tol=1e-9) if isinstance(b, float) and isinstance(a, (int, float)) else a == b
    return all(k in params and same(params[k], v) for k, v in point.items())


def suggest_optimizer(trial, optimizers=("adam", "adamw", "rmsprop", "sgd"), lr=(1e-5, 1e-3)) -> None:
    """The optimiser, per-network learning rates (TTUR) and only the hyperparameters that apply to it:
    betas for adam/adamw, momentum for sgd. For define-by-run spaces."""
    optimizer = trial.suggest_categorical("optimizer", list(optimizers))
    trial.suggest_float("g_lr", *lr, log=True)
    trial.suggest_float("d_lr", *lr, log=True)
    if optimizer in ("adam", "adamw"):
        trial.suggest_float("beta1", 0.0, 0.9)
        trial.suggest_categorical("beta2", [0.9, 0.99, 0.999])
    if optimizer == "sgd":
        trial.suggest_float("momentum", 0.0, 0.95)


def _inside(key: str, domain, value) -> bool:
    """Whether `value` lies within what a ray.tune domain can produce (its corner values)."""
    corners = _corner_values(key, domain)
    if hasattr(domain, "categories"):
        return value in corners
    return corners[0] <= value <= corners[1]


def _is_float_range(domain) -> bool:
    # ray.tune's Float domain, by name: a definition imports no Ray. Its Integer one has bounds too.
    return type(domain).__name__ == "Float"


def _fixed_trial(space: Callable, values: dict) -> optuna.trial.FixedTrial:
    """A define-by-run space run on a point: what it suggested (`params`) and from which
    distributions."""
    trial = optuna.trial.FixedTrial(values)
    with warnings.catch_warnings():
        # FixedTrial only warns about a value outside its range; the caller refuses it.
        warnings.filterwarnings("ignore", message=".*out of the range", category=UserWarning)
        # A ValueError here: the space suggested a name the point lacks, or with bad arguments.
        _no_constants(space(_NamedErrors(trial)))
    return trial


class _NamedErrors:
    """A trial whose suggest_* calls name the parameter when Optuna refuses them (Optuna's own
    message, e.g. "`low <= high` must hold", names only the numbers)."""

    def __init__(self, trial):
        self._trial = trial

    def __getattr__(self, attr):
        method = getattr(self._trial, attr)
        if not attr.startswith("suggest_"):
            return method

        @functools.wraps(method)
        def suggest(name, *args, **kwargs):
            try:
                return method(name, *args, **kwargs)
            except ValueError as e:
                raise SpaceError(f"space parameter {name!r}: {str(e).splitlines()[0]}") from None
        return suggest


def _no_constants(returned) -> None:
    # Ray would merge a returned dict into the config; fixed values belong in the Sweep's config.
    if returned is not None:
        raise SpaceError("a define-by-run space must return None (put fixed values in the sweep's config)")


def _draws(space: Callable, n: int) -> list[dict]:
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    draws = []
    for _ in range(n):
        trial = study.ask()
        _no_constants(space(_NamedErrors(trial)))
        draws.append(dict(trial.params))
        study.tell(trial, 0.0)
    return draws


def _corner_values(key: str, domain) -> list:
    """Values a ray.tune domain can produce that validation should see: every category, both bounds."""
    if hasattr(domain, "categories"):
        if not domain.categories:
            raise SpaceError(f"space.{key}: tune.choice([]) has nothing to choose from")
        return list(domain.categories)
    if _is_float_range(domain) or type(domain).__name__ == "Integer":  # not hasattr: a str has .lower and .upper
        lower, upper = domain.lower, domain.upper
        if not (math.isfinite(lower) and math.isfinite(upper)):
            raise SpaceError(f"space.{key}: bounds must be finite, got [{lower}, {upper}]")
        if not lower < upper:  # Optuna would refuse it only once the trials start
            raise SpaceError(f"space.{key}: empty range, lower {lower} must be below upper {upper}")
        # ray.tune's randint and lograndint upper bounds are exclusive, qrandint's and qlograndint's inclusive
        # (a multiple of q); a float range's is its bound, even written as an int (tune.uniform(0, 1) keeps 1).
        exclusive = not _is_float_range(domain) and type(domain.get_sampler()).__name__ != "Quantized"
        return [lower, upper - 1 if exclusive else upper]
    raise SpaceError(f"space.{key}: expected a ray.tune domain (tune.choice, tune.loguniform, ...), got {domain!r}")
