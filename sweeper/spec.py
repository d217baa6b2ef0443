"""The Sweep a search-space file defines, and how the CLI turns it into the sweep that runs.

A search-space file is plain Python that assigns `sweep = Sweep(...)`; nothing in it runs Ray.
One mechanism for every kind of trial: the config's type decides the kind (sweeper.tasks), which
supplies the default trainable, metric and `--quick` budget.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

from sweeper.space import SpaceError, searched_keys, space_samples, warm_start_params
from trainables.config import Config, ConfigError, field_types
from trainables.errors import BadInput


class SweepError(BadInput):
    """A bad sweep definition or command-line value; one line naming the key, file or value."""


@dataclass(frozen=True)
class TPE:
    """Optuna's TPE sampler (seeded, so a sweep proposes the same configs when re-run).

    `n_startup_trials`: finished trials (warm starts included) before TPE replaces random draws;
    None = max(2, num_samples // 8). Trials in flight are told to TPE as constant liars.
    """
    seed: int = 0
    n_startup_trials: int | None = None

    def startup_trials(self, num_samples: int) -> int:
        return self.n_startup_trials if self.n_startup_trials is not None else max(2, num_samples // 8)


@dataclass(frozen=True)
class ASHA:
    """Async successive halving on the sweep metric, one rung step = one eval period."""
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass(frozen=True)
class Resources:
    """Per trial. `gpu_fraction` applies only where GPUs exist: "auto" measures a trial's GPU memory
    once before the trials start and packs as many per GPU as fit, at most 8 (sweeper.footprint);
    a number is used as given (0.25 packs four trials per GPU, 2 gives each trial two GPUs)."""
    cpus: float = 1.0
    gpu_fraction: float | str = "auto"

    def __post_init__(self):
        if not (isinstance(self.cpus, (int, float)) and self.cpus > 0):
            raise SweepError(f"resources.cpus: must be a number > 0, got {self.cpus!r}")
        fraction = self.gpu_fraction
        if fraction == "auto":
            return
        number = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
        # Ray takes a fraction of one GPU, or whole GPUs.
        if not (number and (0 < fraction <= 1 or (fraction > 1 and float(fraction).is_integer()))):
            raise SweepError(f"resources.gpu_fraction: must be 'auto', a fraction in (0, 1] or a whole number of "
                             f"GPUs, got {fraction!r}")


@dataclass(frozen=True)
class FinalEval:
    """After the trials: the best checkpoints of the `top_k` best trials of each group (searched and
    warm-start trials; a classifier sweep groups by real/synthetic data) are measured again, e.g.
    `fid_final` on more samples with another seed, or `test_acc` on the held-out test split."""
    top_k: int = 3


@dataclass(frozen=True)
class Quick:
    """What `--quick` changes: the budget only (trial count, image size, steps, samples). Each kind
    of trial has its own default (sweeper.tasks)."""
    num_samples: int = 6
    config: dict = field(default_factory=dict)
    final: FinalEval = FinalEval(top_k=1)


@dataclass(frozen=True)
class Sweep:
    name: str
    config: Config                          # the fixed part of every trial's config (GANConfig, ClassifierConfig, ...)
    space: object = field(default_factory=dict)  # {key: ray.tune domain} or define-by-run fn (sweeper.space)
    warm_start: tuple = ()                  # hand-tuned points (dicts or whole configs) tried first
    trainable: Callable | None = None       # None: the config kind's own (train_gan, train_classifier)
    metric: str | None = None               # None: the config kind's own ("fid" min, "val_acc" max)
    mode: str | None = None
    num_samples: int = 16
    max_failures: int = 2                   # retries of a crashed trial, from its last checkpoint
    max_concurrent: int | None = None       # None: what the resources allow, capped (see tuner.py)
    searcher: TPE = TPE()
    scheduler: ASHA | None = ASHA()        # None: FIFO, every trial runs its full budget
    resources: Resources = Resources()
    final: FinalEval = FinalEval()
    quick: Quick | None = None              # None: the config kind's own

    def __post_init__(self):
        # The config kind fills in what the file leaves out, so a sweep is complete once built.
        task = self.task
        for key, value in (("trainable", task.trainable()), ("metric", task.metric), ("mode", task.mode),
                           ("quick", task.quick or Quick())):
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)

    @property
    def task(self):
        from sweeper.tasks import task_for  # the tasks import their trainables (and torch)

        return task_for(self.config)

    def validate(self) -> "Sweep":
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise SweepError(f"name: {self.name!r} must be letters, digits, '-' or '_'")
        if not isinstance(self.config, Config) or not dataclasses.is_dataclass(self.config):
            raise SweepError(f"config: expected a frozen dataclass deriving from trainables.config.Config, "
                             f"got {type(self.config).__name__}")
        if not callable(self.trainable):
            raise SweepError(f"trainable: {type(self.config).__name__} has no default trainable; "
                             f"pass Sweep(trainable=fn) with fn(cfg, report, restore_from=None)")
        if self.metric is None:
            raise SweepError(f"metric: {type(self.config).__name__} has no default metric; pass Sweep(metric=..., mode=...)")
        if self.num_samples < 1:
            raise SweepError(f"num_samples: must be >= 1, got {self.num_samples}")
        if self.mode not in ("min", "max"):
            raise SweepError(f"mode: {self.mode!r} is not 'min' or 'max'")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise SweepError(f"max_concurrent: must be >= 1, got {self.max_concurrent}")
        num_evals = getattr(self.config, "num_evals", None)
        if type(num_evals) is not int or num_evals < 1:
            raise SweepError(f"config.num_evals: {type(self.config).__name__} needs an int num_evals >= 1 (the trial's "
                             f"budget in eval periods, ASHA's max_t), got {num_evals!r}")
        if self.final.top_k < 1:
            raise SweepError(f"final.top_k: must be >= 1, got {self.final.top_k}")
        _config_or_error(self.config, {}, "config")
        try:
            for where, params in space_samples(self.space):
                _config_or_error(self.config, params, where)
            for i, point in enumerate(self.warm_start):
                _config_or_error(self.config, self.warm_start_params(i), f"warm_start[{i}]")
        except SpaceError as e:
            raise SweepError(str(e)) from None
        self._refuse_searched_prepared_keys()
        return self

    def _refuse_searched_prepared_keys(self) -> None:
        for key in sorted(self.searched_keys() & set(type(self.config).PREPARED_KEYS)):
            raise SweepError(f"space.{key}: is prepared once per sweep (data, statistics, generators) and cannot "
                             f"be searched; fix it in the sweep's config (or --data / --set {key}=...) and run "
                             f"one sweep per value")

    def is_warm_start(self, params: dict) -> bool:
        """Whether a trial's sampled params are one of the warm-start points."""
        return any(same_params(params, self.warm_start_params(i)) for i in range(len(self.warm_start)))

    def warm_start_params(self, i: int) -> dict:
        try:
            return warm_start_params(self.space, self.warm_start[i])
        except SpaceError as e:
            raise SweepError(f"warm_start[{i}]: {e}") from None

    def searched_keys(self) -> set[str]:
        return searched_keys(self.space)

    def trial_config(self, sampled: dict) -> Config:
        return self.config.replace(**sampled).validate()

    def resolve(self, *, quick=False, overrides=(), num_samples=None, data=None, name=None) -> "Sweep":
        """The sweep that runs: --quick budget, then --data/--set, then --num-samples/--name."""
        sweep = self
        if quick:
            sweep = sweep.with_config(sweep.quick.config, "quick").with_(
                num_samples=sweep.quick.num_samples, final=sweep.quick.final)
        if data is not None:
            sweep = sweep.with_config({"data": data}, "--data")
        sweep = sweep.with_config(parse_overrides(overrides, type(sweep.config)), "--set")
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


def same_params(params: dict, point: dict) -> bool:
    def same(a, b):
        return math.isclose(a, b, rel_tol=1e-9) if isinstance(b, float) and isinstance(a, (int, float)) else a == b
    return all(k in params and same(params[k], v) for k, v in point.items())


def _config_or_error(config: Config, changes: dict, where: str) -> Config:
    try:
        return config.replace(**changes).validate()
    except ConfigError as e:
        raise SweepError(f"{where}: {e}") from None
    except TypeError as e:
        raise SweepError(f"{where}: {e}") from None


def parse_overrides(items, config_type: type) -> dict:
    """`key=value` strings -> typed config changes; the type comes from the config's defaults."""
    types = field_types(config_type)
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


__all__ = ["Sweep", "SweepError", "TPE", "ASHA", "Resources", "FinalEval", "Quick", "parse_overrides"]
