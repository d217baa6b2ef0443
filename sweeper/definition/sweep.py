"""The Sweep a search-space file defines, and how the CLI turns it into the sweep that runs.

A search-space file is plain Python that assigns `sweep = Sweep(...)`; building one starts and
imports nothing heavy (no Ray, no torch). A Sweep is pure data, like Ray Tune's TuneConfig: what the
file leaves out (trainable, metric, mode, scheduler, `--quick` budget) is filled by the kind of its
config when the driver takes it (`sweeper.kinds.complete`), and only a completed Sweep validates.

The objective every decision uses (the scheduler's rungs, the searcher, the final candidates) is
`objective`: the best per-eval value of `metric` a trial has reached so far (`fid_best`), which
is the value of a checkpoint it keeps, not its last (possibly worse) one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from sweeper.definition.budget import Budget, parse_budget
from sweeper.definition.options import (
    ASHA,
    AUTO,
    PB2,
    PBT,
    POPULATION,
    TPE,
    FinalEval,
    Promotion,
    Quick,
    Resources,
    SweepError,
)
from sweeper.definition.space import (
    SpaceError,
    float_ranges,
    searched_keys,
    space_samples,
    warm_start_params,
)
from sweeper.definition.warm import (
    Neighbour,
    check_factors,
    check_warm_start,
    neighbours_of,
    note,
    sweeps_own,
    warm_overrides,
)
from trainables.config import Config, ConfigError, field_types

# In a PBT/PB2 trial's Tune config: how many times the member has taken another's checkpoint (set by
# the scheduler at each exploit: sweeper.search.population), so that each generation's MLflow run is
# found again, not made twice, when the trial is retried or the sweep resumed. Not a config key.
GENERATION_KEY = "sweeper_generation"


def without_generation(sampled: dict) -> dict:
    return {key: value for key, value in sampled.items() if key != GENERATION_KEY}


@dataclass(frozen=True)
class Sweep:
    name: str
    config: Config                          # the fixed part of every trial's config (GANConfig, ClassifierConfig, ...)
    space: object = field(default_factory=dict)  # {key: ray.tune domain} or define-by-run fn (sweeper.definition.space)
    warm_start: tuple = ()                  # hand-tuned points (dicts or whole configs) tried first
    # Each warm start's learning rates times each factor, tried next (sweeper.definition.warm); () for none.
    warm_neighbours: tuple[float, ...] = (0.5, 2.0)
    trainable: Callable | None = None       # None: the config kind's own (train_gan, train_classifier)
    metric: str | None = None               # None: the config kind's own ("fid" min, "val_acc" max)
    mode: str | None = None
    num_samples: int = 16
    max_failures: int = 2                   # retries of a crashed trial, from its last checkpoint
    max_concurrent: int | None = None       # None: what the resources allow, capped (sweeper.search.tuner)
    searcher: TPE = TPE()
    # "auto": the kind's (Promotion for GANs, ASHA otherwise); ASHA(): Ray's, which only stops
    # trials; PBT()/PB2(): a population whose members take each other's checkpoints and mutate their
    # hyperparameters as they train; None: FIFO, every trial runs its full num_evals.
    scheduler: Promotion | ASHA | PBT | PB2 | None | str = AUTO
    # Device-seconds or kimg for the whole sweep ("2gpu-h", "600cpu-s", "5000kimg"; sweeper.search.plan):
    # with Promotion it sets the rungs, max_t and num_samples; with any scheduler the sweep stops when spent.
    budget: Budget | str | None = None
    resources: Resources = Resources()
    final: FinalEval = FinalEval()
    quick: Quick | None = None              # None: the config kind's own

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
        if not isinstance(self.scheduler, (Promotion, ASHA, *POPULATION, type(None))):
            raise SweepError(f"scheduler: expected Promotion(...), ASHA(...), PBT(...), PB2(...) or None (FIFO), "
                             f"got {self.scheduler!r}")
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise SweepError(f"budget: expected a Budget or text such as '2gpu-h', got {self.budget!r}")
        if self.final.top_k < 1:
            raise SweepError(f"final.top_k: must be >= 1, got {self.final.top_k}")
        check_factors(self.warm_neighbours)
        _config_or_error(self.config, {}, "config")
        try:
            for where, params in space_samples(self.space):
                _config_or_error(self.config, params, where)
            for i, changes in enumerate(self.warm_changes):
                _config_or_error(self.config, changes, f"warm_start[{i}]")
            for neighbour in self.neighbours:
                _config_or_error(self.config, {**neighbour.params, **neighbour.overrides}, neighbour.text())
        except SpaceError as e:
            raise SweepError(str(e)) from None
        self._refuse_searched_prepared_keys()
        return self

    def _refuse_searched_prepared_keys(self) -> None:
        for key in sorted(self.searched_keys() & set(type(self.config).PREPARED_KEYS)):
            raise SweepError(f"space.{key}: is prepared once per sweep (data, statistics, generators) and cannot "
                             f"be searched; fix it in the sweep's config (or --data / --set {key}=...) and run "
                             f"one sweep per value")

    @property
    def objective(self) -> str:
        """The reported value every decision ranks trials by: the best `metric` so far (`fid_best`)."""
        return f"{self.metric}_best"

    @property
    def warm_points(self) -> list[dict]:
        """The searched params of each warm-start point, in order, as the searcher enqueues them."""
        return [self.warm_start_params(i) for i in range(len(self.warm_start))]

    @property
    def warm_overrides(self) -> list[dict]:
        """Each warm start's fixed overrides beside its searched params: the keys where a whole
        config differs from the sweep's, less the sweep's own (sweeper.definition.warm); {} for a dict."""
        return [warm_overrides(self.config, point, params) for point, params in zip(self.warm_start, self.warm_points)]

    @property
    def warm_changes(self) -> list[dict]:
        """Each warm start's config changes (params and overrides): its trial's Tune config."""
        return [{**params, **overrides} for params, overrides in zip(self.warm_points, self.warm_overrides)]

    @property
    def neighbours(self) -> list[Neighbour]:
        """Every warm start's neighbours, in order (sweeper.definition.warm): the candidates, of which
        the searcher enqueues the first few (`enqueued_neighbours`)."""
        points = self.warm_points
        ranges = [float_ranges(self.space, params) for params in points]
        return neighbours_of(points, self.warm_overrides, ranges, self.warm_neighbours)

    @property
    def neighbour_points(self) -> list[dict]:
        """The searched params of each neighbour, in order."""
        return [neighbour.params for neighbour in self.neighbours]

    @property
    def neighbour_overrides(self) -> list[dict]:
        """Each neighbour's fixed overrides: its warm start's."""
        return [neighbour.overrides for neighbour in self.neighbours]

    def enqueued_neighbours(self, configs: int | None = None) -> list[Neighbour]:
        """The neighbours the searcher enqueues after the warm starts: warm starts and neighbours
        together take at most a third of the sweep's `configs` (None: num_samples; a budget's plan
        passes its count), the neighbours what the warm starts leave of it, so that at least two
        thirds stay the search's (6 quick trials and 2 warm starts: no neighbour; 32 trials: 8)."""
        cap = (self.num_samples if configs is None else configs) // 3 - len(self.warm_start)
        return self.neighbours[:max(0, cap)]

    def warm_start_text(self, i: int) -> str:
        """Warm start i beyond its searched params (\"\" when nothing), for --dry-run and the summary."""
        params = self.warm_start_params(i)
        point = self.warm_start[i]
        return note(warm_overrides(self.config, point, params), sweeps_own(self.config, point, params), self.config)

    def warm_start_params(self, i: int) -> dict:
        check_warm_start(self.config, self.warm_start[i], i)
        try:
            return warm_start_params(self.space, self.warm_start[i])
        except SpaceError as e:
            raise SweepError(f"warm_start[{i}]: {e}") from None

    def searched_keys(self) -> set[str]:
        return searched_keys(self.space)

    def fixed_config(self) -> dict:
        """The config values no trial searches: the same in every trial of the sweep."""
        searched = self.searched_keys()
        return {k: v for k, v in dataclasses.asdict(self.config).items() if k not in searched}

    def trial_config(self, sampled: dict) -> Config:
        """The config a trial trains with, from its Tune config (the population's generation dropped)."""
        return self.config.replace(**without_generation(sampled)).validate()

    def resolve(self, *, quick=False, overrides=(), num_samples=None, data=None, name=None,
                budget=None) -> "Sweep":
        """The sweep that runs: --quick budget, then --data/--set, then --num-samples/--name/--budget.
        On a completed Sweep (`sweeper.kinds.complete`), which knows its kind's `--quick` budget."""
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
        if budget is not None:
            sweep = sweep.with_(budget=parse_budget(budget) if isinstance(budget, str) else budget)
        return sweep.validate()

    def with_config(self, changes: dict, where: str) -> "Sweep":
        searched = sorted(set(changes) & self.searched_keys())
        # A fixed value for a searched key would be silently ignored: say so instead.
        if searched and where == "--set":
            raise SweepError(f"--set {searched[0]}: the key is searched in this sweep; remove it from the space to fix it")
        fixed = {k: v for k, v in changes.items() if k not in searched}
        # The command line wins over the file for whole-config warm starts too (sweeper.definition.warm):
        # a --quick warm start is as narrow as the sweep's config, a --set value applies to it.
        warm = self.warm_start
        if fixed:
            warm = type(warm)(point.replace(**fixed) if type(point) is type(self.config) else point for point in warm)
        try:
            return self.with_(config=self.config.replace(**changes), warm_start=warm)
        except ConfigError as e:
            raise SweepError(f"{where}: {e}") from None

    def with_(self, **changes) -> "Sweep":
        return dataclasses.replace(self, **changes)


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


__all__ = ["Sweep", "SweepError", "TPE", "Promotion", "ASHA", "Resources", "FinalEval", "Quick", "parse_overrides"]
