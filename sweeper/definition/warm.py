"""Warm starts that are whole configs: what of a published configuration a warm-start trial runs.

A warm start is a dict of searched keys, or a whole config of the sweep's config class (a seed
project's `published` GANConfig). A whole config is the whole published configuration:
- its values of the keys the space searches on its branch are the trial's params (Optuna enqueues
  them, `sweeper.definition.space.warm_start_params`);
- its other keys whose value differs from the sweep's `config` are the trial's fixed overrides
  (seed 001's batch_size 128, linear LR decay, label smoothing, instance noise; an EMA, D dropout,
  the critic steps, ...): the searcher puts them in that trial's config, and the trial logs them
  as its params like every config value. A key the trial does not use (ema_start_kimg without an
  EMA, the betas of an sgd point) is left out;
- except the keys that are the sweep's own (`sweep_keys`), which every trial takes from the sweep:
  - the config class's PREPARED_KEYS (data, resolution, the FID extractor; a classifier's data,
    test data, resolution and generators): prepared once per sweep, so they cannot vary per
    trial. A seed published at 128 px runs at 64 px in a 64 px sweep (`sweeps_own` names what
    the sweep replaced, for `--dry-run` and the summary); run one sweep per resolution;
  - what makes trials comparable: the budget (`num_evals`, `steps_per_eval`: ASHA's rungs are eval
    periods) and the measurement (`fid_samples`, `ref_samples`, `final_fid_samples`; a
    classifier's `val_fraction`, `test_fraction`, which split the data once per sweep);
  - what the machine decides rather than the recipe: `seed`, `device`, `mixed_precision`,
    `cuda_graph`.
A dict warm start names searched keys only; naming a prepared key is an error, since no trial can
run with another value of it. `--quick`, `--data` and `--set` change the whole-config warm starts'
non-searched keys as they change the sweep's config (`Sweep.with_config`): the command line wins
over the file, so a quick sweep's warm starts are narrow too.

Neighbours (`neighbours_of`): a hand-tuned config's learning rate is the value most often a little
off, so each warm start also brings configurations that differ from it only there: its searched
learning rates (`is_learning_rate`: `lr`, `*_lr`, `lr_*` float ranges; `g_lr` and `d_lr` with
`suggest_optimizer`) all multiplied by one factor of `Sweep.warm_neighbours` (x1/2 and x2 by default),
so the G/D ratio is kept. Each rate is then put back into its range in the space (a log range's
bound, a quantized range's grid), and a neighbour that lands on its warm start or on an earlier
point is dropped: a warm start at the top of the range has no x2 neighbour. A neighbour keeps its
warm start's fixed overrides (the same whole config with another learning rate), but it is no warm
start: never equal in its params to one, it is ranked, stopped and evaluated with the searched
trials. A learning rate searched as a choice is no range and is not scaled; a warm start without
a searched learning-rate range has no neighbours. How many of them run: warm starts and neighbours together
take at most a third of the sweep's configurations (`Sweep.enqueued_neighbours`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from sweeper.definition.options import SweepError
from sweeper.definition.space import same_params

# Budget, measurement and machine keys that stay the sweep's (see above); a config class lacking
# one simply has none.
SWEEP_OWNED = frozenset({"num_evals", "steps_per_eval", "fid_samples", "ref_samples", "final_fid_samples",
                         "val_fraction", "test_fraction", "seed", "device", "mixed_precision", "cuda_graph"})


# Named like a learning rate but not one: the "step" schedule's multiplier.
NOT_RATES = frozenset({"lr_gamma"})


def sweep_keys(config) -> set[str]:
    """The keys a whole-config warm start takes from the sweep's `config` whatever its own value."""
    return set(type(config).PREPARED_KEYS) | SWEEP_OWNED


def warm_overrides(config, point, params: dict) -> dict:
    """A whole-config warm start's fixed overrides: its keys outside its searched `params` and the
    sweep's own keys whose value differs from the sweep's `config`, less those its trial does not use
    (`inapplicable_keys`: ema_start_kimg without an EMA). {} for a dict point."""
    overrides = {key: value for key, value in _outside(config, point, params).items() if key not in sweep_keys(config)}
    unused = config.replace(**params, **overrides).inapplicable_keys()
    return {key: value for key, value in overrides.items() if key not in unused}


def sweeps_own(config, point, params: dict) -> dict:
    """{key: the warm start's own value} for the sweep's own keys where the sweep's value replaced it."""
    return {key: value for key, value in _outside(config, point, params).items() if key in sweep_keys(config)}


def check_warm_start(config, point, i: int) -> None:
    """A whole config of another class, or a dict naming a prepared key, is a SweepError."""
    if dataclasses.is_dataclass(point):
        if type(point) is not type(config):
            raise SweepError(f"warm_start[{i}]: a {type(point).__name__}, but the sweep's config is a "
                             f"{type(config).__name__}")
        return
    for key in sorted(set(point) & set(type(config).PREPARED_KEYS)):
        raise SweepError(f"warm_start[{i}].{key}: {point[key]!r} (the sweep's {getattr(config, key)!r}) is prepared "
                         f"once per sweep (data, statistics, generators) and cannot vary per trial; set it in the "
                         f"sweep's config (or --set {key}=...) and run one sweep per value")


def note(overrides: dict, own: dict, config) -> str:
    """The part of a warm start beyond its searched params, for `--dry-run` and the summary."""
    parts = [f"fixed for it: {_items(overrides)}"] if overrides else []
    if own:
        parts.append("the sweep's own: " + ", ".join(f"{k}={getattr(config, k)!r} (not {v!r})" for k, v in own.items()))
    return "; ".join(parts)


def is_learning_rate(key: str) -> bool:
    return key not in NOT_RATES and (key == "lr" or key.endswith("_lr") or key.startswith("lr_"))


@dataclass(frozen=True)
class Neighbour:
    """Warm start `of` with its learning rates `rates` multiplied by `factor` (then put in range)."""
    of: int
    factor: float
    rates: tuple[str, ...]
    params: dict      # the searched params Optuna enqueues
    overrides: dict   # its warm start's fixed overrides

    def text(self) -> str:
        """One line for `--dry-run`."""
        return f"warm-start neighbour of [{self.of}]: {_items({k: self.params[k] for k in self.rates})} (x{self.factor:g})"


def neighbours_of(points: list[dict], overrides: list[dict], ranges: list[dict], factors) -> list[Neighbour]:
    """Each warm start's neighbours, warm start by warm start and factor by factor. `points` and
    `overrides`: the warm starts' params and fixed overrides; `ranges`: per warm start,
    `sweeper.definition.space.float_ranges` of its params. A neighbour whose params are those of a
    warm start or an earlier neighbour (`same_params`) is dropped."""
    found: list[Neighbour] = []
    for i, (point, fixed, bounds) in enumerate(zip(points, overrides, ranges)):
        rates = tuple(key for key in point if is_learning_rate(key) and key in bounds)
        for factor in factors if rates else ():
            params = {**point, **{key: _into(point[key] * factor, *bounds[key]) for key in rates}}
            if not any(same_params(params, earlier) for earlier in [*points, *(n.params for n in found)]):
                found.append(Neighbour(i, factor, rates, params, dict(fixed)))
    return found


def check_factors(factors) -> None:
    """Every factor a finite number > 0 other than 1 (which would be the warm start itself)."""
    if not isinstance(factors, (tuple, list)):
        raise SweepError(f"warm_neighbours: {factors!r} must be a tuple of learning-rate factors, e.g. (0.5, 2.0), "
                         f"or () for none")
    for factor in factors:
        number = isinstance(factor, (int, float)) and not isinstance(factor, bool)
        if not (number and math.isfinite(factor) and factor > 0 and factor != 1):
            raise SweepError(f"warm_neighbours: {factor!r} in {tuple(factors)!r} must be a finite factor > 0 "
                             f"other than 1")


def _into(value: float, low: float, high: float, step: float | None) -> float:
    if step:
        value = low + round((value - low) / step) * step
    return min(max(value, low), high)


def _outside(config, point, params: dict) -> dict:
    if not dataclasses.is_dataclass(point):
        return {}
    return {f.name: getattr(point, f.name) for f in dataclasses.fields(point)
            if f.name not in params and getattr(point, f.name) != getattr(config, f.name)}


def _items(values: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())
