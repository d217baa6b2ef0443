"""The options a Sweep is built from, each pure data: the searcher (TPE), the scheduler (Promotion,
ASHA, PBT or PB2), per-trial resources, the final evaluation and the `--quick` budget."""
from __future__ import annotations

from dataclasses import dataclass, field

from trainables.errors import BadInput

AUTO = "auto"
# A fraction "auto" stands for until it is measured (a CPU-only cluster never measures it, and a
# failed measurement falls back to it): four trials per GPU, the fixed default it replaced.
FALLBACK_GPU_FRACTION = 0.25


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


RUNGS_IN = ("auto", "periods", "compute")


@dataclass(frozen=True)
class Promotion:
    """Asynchronous successive halving with promotion (sweeper.search.promotion), the default for GAN
    sweeps: a trial reaching a rung pauses (its checkpoint saved, its process ended); a paused trial
    in the best 1/`reduction_factor` of its rung resumes from that checkpoint and trains to the next.
    Rungs at `first_rung` x reduction_factor^i eval periods. Without a budget, up to the config's
    num_evals, one bracket of num_samples trials; with one (`Sweep(budget=...)`), the rungs, the
    horizon, the trials and up to `max_brackets` Hyperband brackets come from the budget
    (sweeper.search.plan).

    `rungs_in`: "periods", or "compute" (with a budget: a trial reaches a rung when its compute
    reaches what the rung's periods of the plan's config cost, so trials that differ in cost per
    period are compared at equal compute; the last rung stays max_t periods, the end of every
    trial's schedule; sweeper.search.promotion). Without a budget there is no measured cost to put
    rungs in compute, and they are periods. "auto" (the default): "compute" where the space
    searches a key that changes the cost of a period (the kind's `cost_keys`: for GANs n_critic,
    batch_size, g_width, d_width, arch), else "periods"."""
    reduction_factor: int = 3
    first_rung: int = 2
    max_brackets: int = 3
    rungs_in: str = "auto"

    def __post_init__(self):
        for key, low in (("reduction_factor", 2), ("first_rung", 1), ("max_brackets", 1)):
            value = getattr(self, key)
            if type(value) is not int or value < low:
                raise SweepError(f"scheduler.{key}: must be an int >= {low}, got {value!r}")
        if self.rungs_in not in RUNGS_IN:
            raise SweepError(f"scheduler.rungs_in: {self.rungs_in!r} is not one of {', '.join(map(repr, RUNGS_IN))}")


@dataclass(frozen=True)
class Range:
    """A continuous hyperparameter range PBT resamples from (log-uniformly with `log`), and keeps a
    perturbed value within."""
    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        if not (isinstance(self.low, (int, float)) and isinstance(self.high, (int, float)) and self.low < self.high):
            raise SweepError(f"Range: needs numbers low < high, got {self.low!r}, {self.high!r}")
        if self.log and self.low <= 0:
            raise SweepError(f"Range: a log range needs low > 0, got {self.low!r}")


@dataclass(frozen=True)
class PBT:
    """Population-based training (Ray Tune's PopulationBasedTraining; sweeper.search.population):
    `num_samples` members train side by side; every `interval` eval periods a member in the worst
    `quantile` by its current per-eval metric (not its best so far) takes the checkpoint of one in
    the best quantile (weights, EMA, optimisers, step) and a mutated copy of its hyperparameters,
    then trains on. The initial population is the searcher's first `num_samples` proposals (the warm
    starts first); after that the mutations alone explore.

    `mutations`: config key -> a list of values (a perturbation moves to a neighbouring one) or a
    Range (a perturbation multiplies by 0.8 or 1.2, kept within the range); with probability
    `resample_probability` a key is drawn afresh instead. None: the kind's (for GANs the G/D
    learning rates, beta1, n_critic, the gradient-penalty weight and the EMA decay). Only keys a
    checkpoint can carry over may change (a GAN's architecture and optimizer may not)."""
    interval: int = 1
    quantile: float = 0.25
    mutations: dict | None = None
    resample_probability: float = 0.25

    @property
    def mutated(self) -> tuple:
        return tuple(sorted(self.mutations or ()))

    def __post_init__(self):
        _check_population(self)
        if not (isinstance(self.resample_probability, (int, float)) and 0 <= self.resample_probability <= 1):
            raise SweepError(f"scheduler.resample_probability: must be in [0, 1], got {self.resample_probability!r}")
        for key, values in (self.mutations or {}).items():
            if not (isinstance(values, Range) or (isinstance(values, list) and len(values) >= 2)):
                raise SweepError(f"scheduler.mutations[{key!r}]: expected a list of at least 2 values or a "
                                 f"Range(low, high), got {values!r}")


@dataclass(frozen=True)
class PB2:
    """Population-based bandits (Ray Tune's PB2: PBT whose explore step is a Gaussian-process bandit
    over the population's history instead of random perturbations; needs scikit-learn). `bounds`:
    config key -> (low, high), continuous only (PB2 proposes any value inside); None: the kind's
    (for GANs the learning rates, beta1 and the gradient-penalty weight; n_critic and the EMA decay,
    which take few values, are left to PBT)."""
    interval: int = 1
    quantile: float = 0.25
    bounds: dict | None = None

    @property
    def mutated(self) -> tuple:
        return tuple(sorted(self.bounds or ()))

    def __post_init__(self):
        _check_population(self)
        for key, bound in (self.bounds or {}).items():
            if not (isinstance(bound, (tuple, list)) and len(bound) == 2
                    and all(isinstance(b, (int, float)) for b in bound) and bound[0] < bound[1]):
                raise SweepError(f"scheduler.bounds[{key!r}]: expected (low, high) with low < high, got {bound!r}")


def _check_population(scheduler) -> None:
    if type(scheduler.interval) is not int or scheduler.interval < 1:
        raise SweepError(f"scheduler.interval: must be an int >= 1 (eval periods), got {scheduler.interval!r}")
    if not (isinstance(scheduler.quantile, (int, float)) and 0 < scheduler.quantile <= 0.5):
        raise SweepError(f"scheduler.quantile: must be in (0, 0.5], got {scheduler.quantile!r}")


POPULATION = (PBT, PB2)


@dataclass(frozen=True)
class Resources:
    """Per trial. `gpu_fraction` applies only where GPUs exist: "auto" measures a trial's GPU memory
    once before the trials start and packs as many per GPU as fit, at most 8 (sweeper.search.footprint);
    a number is used as given (0.25 packs four trials per GPU, 2 gives each trial two GPUs)."""
    cpus: float = 1.0
    gpu_fraction: float | str = "auto"

    def __post_init__(self):
        if not (isinstance(self.cpus, (int, float)) and self.cpus > 0):
            raise SweepError(f"resources.cpus: must be a number > 0, got {self.cpus!r}")
        fraction = self.gpu_fraction
        if fraction == AUTO:
            return
        number = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
        # Ray takes a fraction of one GPU, or whole GPUs.
        if not (number and (0 < fraction <= 1 or (fraction > 1 and float(fraction).is_integer()))):
            raise SweepError(f"resources.gpu_fraction: must be 'auto', a fraction in (0, 1] or a whole number of "
                             f"GPUs, got {fraction!r}")

    def per_trial(self, gpus_available: float) -> dict:
        """What Ray reserves for one trial: a GPU fraction where GPUs exist (several trials per
        GPU), CPUs otherwise. "auto" counts as FALLBACK_GPU_FRACTION until the driver has measured
        it (sweeper.search.footprint.resolve_gpu_fraction)."""
        resources = {"cpu": self.cpus}
        if gpus_available > 0:
            resources["gpu"] = FALLBACK_GPU_FRACTION if self.gpu_fraction == AUTO else self.gpu_fraction
        return resources


@dataclass(frozen=True)
class FinalEval:
    """After the trials: the best checkpoints of the `top_k` best trials of each group (searched and
    warm-start trials; a classifier sweep groups by real/synthetic data) are measured again
    (sweeper.driver.final). A GAN: each on a selection draw (`fid_select`: other z, the half of the
    real images the per-eval FID uses), then each group's best by it on an independent report draw
    (`fid_final`: other z again, the other half), so the winner, the best by `fid_select`, reports a
    number that took no part in picking it. A classifier: each once, `test_acc` on the held-out test
    split, the winner picked by validation accuracy."""
    top_k: int = 3


@dataclass(frozen=True)
class Quick:
    """What `--quick` changes: the budget only (trial count, image size, steps, samples). Each kind
    of trial has its own default (sweeper.kinds)."""
    num_samples: int = 6
    config: dict = field(default_factory=dict)
    final: FinalEval = FinalEval(top_k=1)
