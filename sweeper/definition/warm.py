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
"""
from __future__ import annotations

import dataclasses

from sweeper.definition.options import SweepError

# Budget, measurement and machine keys that stay the sweep's (see above); a config class lacking
# one simply has none.
SWEEP_OWNED = frozenset({"num_evals", "steps_per_eval", "fid_samples", "ref_samples", "final_fid_samples",
                         "val_fraction", "test_fraction", "seed", "device", "mixed_precision", "cuda_graph"})


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


def _outside(config, point, params: dict) -> dict:
    if not dataclasses.is_dataclass(point):
        return {}
    return {f.name: getattr(point, f.name) for f in dataclasses.fields(point)
            if f.name not in params and getattr(point, f.name) != getattr(config, f.name)}


def _items(values: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())
