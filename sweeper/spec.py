"""The Sweep a search-space file defines, and how the CLI turns it into the sweep that runs.

A search-space file is plain Python that assigns `sweep = Sweep(...)`; nothing in it runs Ray.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from sweeper.space import SpaceError, searched_keys, space_samples, warm_start_params
from trainables.config import ConfigError, GANConfig, field_types
from trainables.training.gan import train_gan


class SweepError(ValueError):
    """A bad sweep definition or command-line value; one line naming the key, file or value."""


@dataclass(frozen=True)
class TPE:
    """Optuna's TPE sampler (seeded, so a sweep proposes the same configs when re-run)."""
    seed: int = 0
    n_startup_trials: int = 4


@dataclass(frozen=True)
class ASHA:
    """Async successive halving on the sweep metric, one rung step = one eval period."""
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass(frozen=True)
class Resources:
    """Per trial. `gpu_fraction` applies only where GPUs exist: 0.25 packs four trials per GPU."""
    cpus: float = 1.0
    gpu_fraction: float = 0.25


@dataclass(frozen=True)
class Quick:
    """What `--quick` changes: the budget only (trial count, image size, steps, samples)."""
    num_samples: int = 6
    config: dict = field(default_factory=lambda: dict(
        resolution=32, g_width=16, d_width=16, batch_size=32, steps_per_eval=20, num_evals=4,
        fid_samples=512, ref_samples=1024))


@dataclass(frozen=True)
class Sweep:
    name: str
    config: GANConfig                       # the fixed part of every trial's config
    space: object = field(default_factory=dict)  # {key: ray.tune domain} or define-by-run fn (sweeper.space)
    warm_start: tuple = ()                  # hand-tuned points (dicts or GANConfigs) tried first
    trainable: Callable = train_gan
    metric: str = "fid"
    mode: str = "min"
    num_samples: int = 16
    max_failures: int = 2                   # retries of a crashed trial, from its last checkpoint
    searcher: TPE = TPE()
    scheduler: ASHA = ASHA()
    resources: Resources = Resources()
    quick: Quick = Quick()

    def validate(self) -> "Sweep":
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise SweepError(f"name: {self.name!r} must be letters, digits, '-' or '_'")
        if self.num_samples < 1:
            raise SweepError(f"num_samples: must be >= 1, got {self.num_samples}")
        if self.mode not in ("min", "max"):
            raise SweepError(f"mode: {self.mode!r} is not 'min' or 'max'")
        _config_or_error(self.config, {}, "config")
        try:
            for where, params in space_samples(self.space):
                _config_or_error(self.config, params, where)
            for i, point in enumerate(self.warm_start):
                _config_or_error(self.config, self.warm_start_params(i), f"warm_start[{i}]")
        except SpaceError as e:
            raise SweepError(str(e)) from None
        return self

    def warm_start_params(self, i: int) -> dict:
        try:
            return warm_start_params(self.space, self.warm_start[i])
        except SpaceError as e:
            raise SweepError(f"warm_start[{i}]: {e}") from None

    def searched_keys(self) -> set[str]:
        return searched_keys(self.space)

    def trial_config(self, sampled: dict) -> GANConfig:
        return self.config.replace(**sampled).validate()

    def resolve(self, *, quick=False, overrides=(), num_samples=None, data=None, name=None) -> "Sweep":
        """The sweep that runs: --quick budget, then --data/--set, then --num-samples/--name."""
        sweep = self
        if quick:
            sweep = sweep.with_config(sweep.quick.config, "quick").with_(num_samples=sweep.quick.num_samples)
        if data is not None:
            sweep = sweep.with_config({"data": data}, "--data")
        sweep = sweep.with_config(parse_overrides(overrides), "--set")
        if num_samples is not None:
            sweep = sweep.with_(num_samples=num_samples)
        if name is not None:
            sweep = sweep.with_(name=name)
        return sweep.validate()

    def with_config(self, changes: dict, where: str) -> "Sweep":
        searched = sorted(set(changes) & self.searched_keys())
        # A fixed value for a searched key would be silently ignored: say so instead.
        if searched and where == "--set":
            raise SweepError(f"--set {searched[0]}: the key is searched in this sweep; remove it from the space to fix it")
        try:
            return self.with_(config=self.config.replace(**changes))
        except ConfigError as e:
            raise SweepError(f"{where}: {e}") from None

    def with_(self, **changes) -> "Sweep":
        return dataclasses.replace(self, **changes)


def _config_or_error(config: GANConfig, changes: dict, where: str) -> GANConfig:
    try:
        return config.replace(**changes).validate()
    except ConfigError as e:
        raise SweepError(f"{where}: {e}") from None
    except TypeError as e:
        raise SweepError(f"{where}: {e}") from None


def parse_overrides(items) -> dict:
    """`key=value` strings -> typed config changes; the type comes from GANConfig's defaults."""
    types = field_types(GANConfig)
    changes = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise SweepError(f"--set {item!r}: expected key=value")
        if key not in types:
            raise SweepError(f"--set {key}: unknown config key (known: {', '.join(sorted(types))})")
        changes[key] = _parse_value(key, text.strip(), types[key])
    return changes


def _parse_value(key: str, text: str, kind: type):
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise SweepError(f"--set {key}={text}: expected true or false")
        return text.lower() in ("true", "1")
    try:
        return kind(text)
    except ValueError:
        raise SweepError(f"--set {key}={text}: expected {kind.__name__}") from None


__all__ = ["Sweep", "SweepError", "TPE", "ASHA", "Resources", "Quick", "parse_overrides"]
