"""The Sweep a search-space file defines, and how the CLI turns it into the sweep that runs.

A search-space file is plain Python that assigns `sweep = Sweep(...)`; nothing in it runs Ray.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

from sweeper.space import SpaceError, searched_keys, space_samples, warm_start_params
from trainables.config import ConfigError, GANConfig, field_types
from trainables.training.gan import train_gan


EVAL_EXTRACTORS = ("auto", "standard", "proxy")


class SweepError(ValueError):
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
    """Per trial. `gpu_fraction` applies only where GPUs exist: 0.25 packs four trials per GPU."""
    cpus: float = 1.0
    gpu_fraction: float = 0.25


@dataclass(frozen=True)
class FinalEval:
    """After the trials: the best checkpoints of the `top_k` best search trials and of the `top_k`
    best warm-start trials (by their per-eval metric) are measured again with the config's
    `final_fid_samples` and another seed; that number (`fid_final`) picks the winner."""
    top_k: int = 3


@dataclass(frozen=True)
class Quick:
    """What `--quick` changes: the budget only (trial count, image size, steps, samples)."""
    num_samples: int = 6
    config: dict = field(default_factory=lambda: dict(
        resolution=32, g_width=16, d_width=16, batch_size=32, steps_per_eval=20, num_evals=4,
        fid_samples=512, ref_samples=512, final_fid_samples=256))
    final: FinalEval = FinalEval(top_k=1)


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
    max_concurrent: int | None = None       # None: what the resources allow, capped (see tuner.py)
    searcher: TPE = TPE()
    scheduler: ASHA | None = ASHA()        # None: FIFO, every trial runs its full budget
    resources: Resources = Resources()
    final: FinalEval = FinalEval()
    # Feature extractor of the per-eval FID: "standard" (Inception), "proxy" (random conv, ~100x
    # cheaper on a CPU) or "auto" (standard where trials get GPUs, proxy otherwise). `fid_final`
    # always uses the standard extractor when its weights are available.
    eval_extractor: str = "auto"
    quick: Quick = Quick()

    def validate(self) -> "Sweep":
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise SweepError(f"name: {self.name!r} must be letters, digits, '-' or '_'")
        if self.num_samples < 1:
            raise SweepError(f"num_samples: must be >= 1, got {self.num_samples}")
        if self.mode not in ("min", "max"):
            raise SweepError(f"mode: {self.mode!r} is not 'min' or 'max'")
        if self.eval_extractor not in EVAL_EXTRACTORS:
            raise SweepError(f"eval_extractor: {self.eval_extractor!r} is not one of {', '.join(EVAL_EXTRACTORS)}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise SweepError(f"max_concurrent: must be >= 1, got {self.max_concurrent}")
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
        self._refuse_searched_data_keys()
        return self

    def _refuse_searched_data_keys(self) -> None:
        # The driver prepares the data and its reference statistics once, at the fixed values; a
        # trial with another resolution would silently train on images of the wrong size.
        for key in sorted(self.searched_keys() & set(type(self.config).DATA_KEYS)):
            raise SweepError(f"space.{key}: defines the data, which is prepared once per sweep and cannot be "
                             f"searched; fix it in the sweep's config (or --data / --set {key}=...) and run one "
                             f"sweep per value")

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

    def trial_config(self, sampled: dict) -> GANConfig:
        return self.config.replace(**sampled).validate()

    def resolve(self, *, quick=False, overrides=(), num_samples=None, data=None, name=None) -> "Sweep":
        """The sweep that runs: --quick budget, then --data/--set, then --num-samples/--name."""
        sweep = self
        if quick:
            sweep = sweep.with_config(sweep.quick.config, "quick").with_(
                num_samples=sweep.quick.num_samples, final=sweep.quick.final)
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


def same_params(params: dict, point: dict) -> bool:
    def same(a, b):
        return math.isclose(a, b, rel_tol=1e-9) if isinstance(b, float) and isinstance(a, (int, float)) else a == b
    return all(k in params and same(params[k], v) for k, v in point.items())


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


__all__ = ["Sweep", "SweepError", "TPE", "ASHA", "Resources", "FinalEval", "Quick", "parse_overrides"]
