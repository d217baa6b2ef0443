"""Asynchronous successive halving with promotion (ASHA's promotion variant, Li et al. 2020; ray #32634).

Ray's ASHAScheduler only stops trials: a trial it does not stop at a rung goes on at once, judged
against the few trials that reached the rung before it. Here a trial reaching a rung PAUSEs
(Tune saves the checkpoint it reported with that result and ends its process); a paused trial in
the top 1/eta of its rung's recorded results is resumed from that checkpoint and trains to the
next rung (promotion, highest rung first); new configurations start while none is promotable.
A trial reaching max_t (the last rung) completes. Built on Tune's scheduler API the way
HyperBandForBOHB pauses and resumes trials (PAUSE, `choose_trial_to_run`).

Brackets (Hyperband's, `sweeper.search.plan`): bracket s starts its trials at rung s, and each
bracket ranks and promotes among its own trials. Trials join brackets in turn, in proportion to
the brackets' sizes (Sainte-Laguë's rule: the next trial joins the bracket with the least
(joined + 1/2) / size; 9, 3, 1 configurations: brackets 0, 0, 1, 0, 0, 0, 1, 2, 0, ...). A budget
that stops admitting configurations early (a period cost more than the plan's estimate) then cuts
every bracket alike, not the last ones only; the +1/2 keeps a bracket of one long trial from starting
third, where a budget cut short would have spent most of itself on it.

Rungs in compute (`Rungs.compute`): where trials differ in cost per period (a searched `n_critic`,
batch or width), a trial reaches rung i < k when its compute reaches what rungs[i] periods of the
plan's reference config cost, so configurations are compared at equal compute, not at equal
periods. The compute counted is that of training alone (`train_compute_s`, where the trainable
reports each period's `train_s`), since the start-up, the evaluation and the checkpoints cost every
configuration alike: counted, a trial's start-up would bring its first rung a period or more early
(seen in bench/sweep_efficiency.py, where the warm start paused after 1 period of a rung of 2). A
kimg budget counts `kimg`; a trainable that reports no `train_s`, `compute_s`. Reports come once per period, so the threshold is
half a reference period below the horizon: a trial reaches the rung at the report nearest to it.
The last rung stays max_t periods, the end of every trial's schedule (its LR decay, its EMA): a
finalist trains its whole run, and a cheap configuration that finishes its run before a rung's
compute finishes there.

Once the search algorithm has no more configurations to give (all started, or a budget admits no
more), no rung gets another record than those of trials still training, and a rung's top 1/eta is
rounded up instead of down: the best of a rung with fewer than eta records goes on, so what a
budget has left trains the best configurations further rather than lying unused.

Only paused trials left, none promotable and none pending (Tune then waits forever: ray #14500,
#6780): if the search algorithm has no more configurations to give, no paused trial will ever be
promoted and all are stopped (the end of the sweep). If it holds
new configurations back, that is a budget that cannot pay for another configuration yet
(sweeper.search.spending) or a concurrency limit counting paused trials as running (Tune's
ConcurrencyLimiter and BasicVariantGenerator do): the best paused trial at the highest rung is
resumed, because stopping one could end a configuration the rung's later records would promote,
and resuming the best one spends the compute where ASHA would next. Use `RunningLimiter` to limit
running trials instead: then this fallback never triggers.

Tune does not save a scheduler's state in its experiment checkpoint: `state()` is plain data
(JSON-able) for the caller to save, `restore(state)` puts it back before `Tuner.fit()` on resume.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from sweeper.compat import limits_concurrency

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rungs:
    """Where a result stands among the rungs: `periods`, the rung horizons in `time_attr` units
    (eval periods), ascending, the last max_t; `compute`, where rungs are in compute, the threshold
    of each rung but the last in `compute_attr` units (module docstring)."""
    periods: tuple[int, ...]
    compute: tuple[float, ...] = ()
    compute_attr: str = "compute_s"

    @classmethod
    def in_compute(cls, periods: Sequence[int], cost_per_period: float, compute_attr: str) -> "Rungs":
        """Rung i < k at (periods[i] - 1/2) x `cost_per_period`: the report nearest the horizon."""
        return cls(tuple(periods), tuple((r - 0.5) * cost_per_period for r in periods[:-1]), compute_attr)

    def reached(self, result: dict, time_attr: str) -> int | None:
        """The highest rung the result has reached; None below the first (or without a time)."""
        t = result.get(time_attr)
        if t is None:
            return None
        if t >= self.periods[-1]:
            return len(self.periods) - 1
        if self.compute and result.get(self.compute_attr) is not None:
            spent = result[self.compute_attr]
            reached = [i for i, threshold in enumerate(self.compute) if spent >= threshold]
        else:
            reached = [i for i, r in enumerate(self.periods) if t >= r]
        return reached[-1] if reached else None


class PromotionASHA(FIFOScheduler):
    def __init__(self, *, rungs: Sequence[int] | Rungs, eta: int = 3, bracket_sizes: Sequence[int] = (),
                 time_attr: str = "training_iteration", metric: str | None = None, mode: str | None = None):
        """`rungs`: horizons in `time_attr` units, ascending, the last max_t; or a `Rungs` (in
        compute). `bracket_sizes`: trials per bracket (bracket s starts at rungs[s]); empty: one bracket."""
        super().__init__()
        self._clock = rungs if isinstance(rungs, Rungs) else Rungs(tuple(rungs))
        rungs = self._clock.periods
        _check(rungs, eta, bracket_sizes, mode)
        self._rungs, self._eta, self._time_attr = tuple(rungs), eta, time_attr
        self._sizes = tuple(bracket_sizes) or (0,)
        self._metric, self._mode = metric, mode
        self._bracket: dict[str, int] = {}  # trial id -> its bracket
        # [bracket][rung] -> {trial id: metric value}, in the order recorded (the earlier wins a tie).
        self._records: list[list[dict[str, float]]] = [[{} for _ in self._rungs] for _ in self._sizes]
        self._promoted: list[list[set[str]]] = [[set() for _ in self._rungs] for _ in self._sizes]
        self._forced = 0  # promotions made only so that Tune does not wait forever
        self._search_done = False  # the search algorithm gives no more configurations

    @classmethod
    def from_plan(cls, plan, in_compute: bool = False, **kwargs) -> "PromotionASHA":
        """From a `sweeper.search.plan.Plan`: its rungs, eta and configurations per bracket;
        `in_compute`: its rungs in compute, where the plan knows what a period costs (`rung_cost`)."""
        rungs = Rungs.in_compute(plan.rungs, plan.rung_cost[1], plan.rung_cost[0]) \
            if in_compute and plan.rung_cost else plan.rungs
        return cls(rungs=rungs, eta=plan.eta, bracket_sizes=plan.configs, **kwargs)

    @property
    def rungs(self) -> Rungs:
        # A scheduler pickled before rungs could be in compute (`sweeper resume` of such a sweep) has no clock.
        return self.__dict__.get("_clock") or Rungs(self._rungs)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True

    def on_trial_add(self, tune_controller, trial: Trial):
        if not self._metric or self._mode not in ("min", "max"):
            raise ValueError(f"PromotionASHA needs metric and mode (here or in tune.TuneConfig), got "
                             f"{self._metric!r} and {self._mode!r}")
        if trial.trial_id not in self._bracket:
            self._bracket[trial.trial_id] = self._next_bracket()
        elif trial.status == Trial.PENDING and self._waiting_at(trial.trial_id) is not None:
            # Tune resumes a paused trial as PENDING; it waits at its rung instead. Tune files the
            # trial under its status after this call (ray 2.60's add_trial).
            trial.set_status(Trial.PAUSED)
            _limiter_call(tune_controller, "on_pause", trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        k = self.rungs.reached(result, self._time_attr)
        if k is None:
            return TrialScheduler.CONTINUE
        self._search_done = _search_done(tune_controller)
        s = self._bracket.setdefault(trial.trial_id, 0)
        if k < s or trial.trial_id in self._promoted[s][k]:
            return TrialScheduler.CONTINUE
        self._records[s][k].setdefault(trial.trial_id, _number(result.get(self._metric)))
        if k == len(self._rungs) - 1:
            return TrialScheduler.STOP
        if self._promotable(s, k, trial.trial_id):
            # Promoted the moment it arrives: it goes on in its own process, as resuming would.
            self._promoted[s][k].add(trial.trial_id)
            return TrialScheduler.CONTINUE
        _limiter_call(tune_controller, "on_pause", trial)
        return TrialScheduler.PAUSE

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        self._search_done = _search_done(tune_controller)
        trials = tune_controller.get_trials()
        paused = [t for t in trials if t.status == Trial.PAUSED]
        promotable = [t for t in paused if self._can_resume(t.trial_id)]
        if promotable:
            return self._resume(tune_controller, max(promotable, key=self._priority))
        pending = next((t for t in trials if t.status == Trial.PENDING), None)
        if pending or not paused or any(t.status == Trial.RUNNING for t in trials):
            return pending
        return self._unstick(tune_controller, paused)

    def debug_string(self) -> str:
        lines = [f"PromotionASHA: rungs {', '.join(map(str, self._rungs))}, eta {self._eta}"
                 + (f" (in {self.rungs.compute_attr})" if self.rungs.compute else "")]
        for s, rungs in enumerate(self._records):
            counts = ", ".join(f"{len(rungs[i])}@{self._rungs[i]}" for i in range(s, len(self._rungs)))
            lines.append(f"bracket {s}: recorded {counts}")
        if self._forced:
            lines.append(f"{self._forced} promotions forced (new configurations held back: a budget, or a limit "
                         f"counting paused trials)")
        return "\n".join(lines)

    def state(self) -> dict:
        """The rung records as plain data (JSON-able: lists, dicts, str, float)."""
        return {"rungs": list(self._rungs), "eta": self._eta, "bracket_sizes": list(self._sizes), "mode": self._mode,
                "bracket": dict(self._bracket), "forced": self._forced,
                "records": [[dict(r) for r in rungs] for rungs in self._records],
                "promoted": [[sorted(p) for p in rungs] for rungs in self._promoted]}

    def restore(self, state: dict) -> None:
        """Puts back what `state()` returned, for the same rungs, eta and brackets. (Not Tune's
        `TrialScheduler.restore(checkpoint_path)`, which Tune 2.60 never calls.)"""
        shape = (list(self._rungs), self._eta, list(self._sizes))
        if (state["rungs"], state["eta"], state["bracket_sizes"]) != shape:
            raise ValueError(f"scheduler state for rungs/eta/brackets {state['rungs']}, {state['eta']}, "
                             f"{state['bracket_sizes']} does not fit {shape}")
        self._bracket, self._forced = dict(state["bracket"]), state["forced"]
        self._records = [[dict(r) for r in rungs] for rungs in state["records"]]
        self._promoted = [[set(p) for p in rungs] for rungs in state["promoted"]]

    def _next_bracket(self) -> int:
        """The bracket with the least (joined + 1/2) / size (the earlier on a tie; module docstring)."""
        if len(self._sizes) == 1:
            return 0
        joined = [0] * len(self._sizes)
        for s in self._bracket.values():
            joined[s] += 1
        return min(range(len(self._sizes)),
                   key=lambda s: ((joined[s] + 0.5) / self._sizes[s] if self._sizes[s] else math.inf, s))

    def _key(self, value: float) -> float:
        """Lower is better; a missing or NaN value is the worst."""
        if math.isnan(value):
            return math.inf
        return value if self._mode == "min" else -value

    def _promotable(self, s: int, k: int, trial_id: str) -> bool:
        recorded = self._records[s][k]
        ranked = sorted(recorded, key=lambda tid: self._key(recorded[tid]))
        top = -(-len(ranked) // self._eta) if self._search_done else len(ranked) // self._eta
        return trial_id in ranked[:top] and trial_id not in self._promoted[s][k]

    def _waiting_at(self, trial_id: str) -> int | None:
        """The rung a trial is paused at: its highest recorded one below max_t, if not promoted from it."""
        s = self._bracket.get(trial_id)
        recorded = [] if s is None else [k for k, r in enumerate(self._records[s]) if trial_id in r]
        k = recorded[-1] if recorded else None
        if k is None or k == len(self._rungs) - 1 or trial_id in self._promoted[s][k]:
            return None
        return k

    def _can_resume(self, trial_id: str) -> bool:
        k = self._waiting_at(trial_id)
        return k is not None and self._promotable(self._bracket[trial_id], k, trial_id)

    def _priority(self, trial: Trial) -> tuple:
        """Higher rung first, then the better value at it."""
        k = self._waiting_at(trial.trial_id)
        if k is None:
            return (-1, 0.0)
        return (k, -self._key(self._records[self._bracket[trial.trial_id]][k][trial.trial_id]))

    def _resume(self, tune_controller, trial: Trial) -> Trial:
        k = self._waiting_at(trial.trial_id)
        if k is not None:
            self._promoted[self._bracket[trial.trial_id]][k].add(trial.trial_id)
        _limiter_call(tune_controller, "on_unpause", trial)
        return trial

    def _unstick(self, tune_controller, paused: list[Trial]) -> Trial | None:
        """Nothing runs, nothing is pending, no paused trial is promotable (module docstring)."""
        if not tune_controller.search_alg.is_finished():
            self._forced += 1
            if self._forced == 1:
                logger.info("PromotionASHA: only paused trials are left and the search algorithm holds new ones "
                            "back (a budget that cannot pay for another yet, or a concurrency limit counting paused "
                            "trials: RunningLimiter counts running ones only): resuming the best paused trial, here "
                            "and each time again")
            return self._resume(tune_controller, max(paused, key=self._priority))
        for trial in paused:
            tune_controller.stop_trial(trial)
        return None


class RunningLimiter(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter counting running trials only: a trial PromotionASHA pauses frees
    its place for a new configuration (Tune's own counts it until it ends). PromotionASHA calls
    `on_pause`/`on_unpause` (the hooks HyperBandForBOHB calls) on the searcher Tune wraps. Pass it
    as `search_alg` with `max_concurrent_trials=None`; Tune then admits `max_concurrent` pending
    trials at a time, as for its own limiter."""

    def __init__(self, searcher: Searcher, max_concurrent: int):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.paused: set[str] = set()  # saved and restored with Tune's searcher state (get_state)

    def suggest(self, trial_id: str) -> dict | None:
        if limits_concurrency(self) and len(self.live_trials - self.paused) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if limits_concurrency(self) and suggestion not in (None, Searcher.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion

    def on_pause(self, trial_id: str):
        self.paused.add(trial_id)  # not passed on: only BOHB's searcher has these hooks

    def on_unpause(self, trial_id: str):
        self.paused.discard(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.paused.discard(trial_id)
        super().on_trial_complete(trial_id, result=result, error=error)


def _number(value) -> float:
    """A metric value as a float (NaN where missing or not a number), so that state() is plain data."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _search_done(tune_controller) -> bool:
    """No configuration will start that has not started yet: the search algorithm gives no more
    and none waits to start (Tune creates a grid's trials at once, pending)."""
    search_alg = getattr(tune_controller, "search_alg", None)
    return bool(search_alg is not None and search_alg.is_finished()
                and not any(t.status == Trial.PENDING for t in tune_controller.get_trials()))


def _limiter_call(tune_controller, hook: str, trial: Trial) -> None:
    searcher = getattr(tune_controller.search_alg, "searcher", None)
    if isinstance(searcher, RunningLimiter):
        getattr(searcher, hook)(trial.trial_id)


def _check(rungs: Sequence[int], eta: int, bracket_sizes: Sequence[int], mode: str | None) -> None:
    if not rungs or any(r <= 0 for r in rungs) or list(rungs) != sorted(set(rungs)):
        raise ValueError(f"rungs must be > 0 and strictly ascending, got {list(rungs)}")
    if eta < 2 or len(bracket_sizes) > len(rungs) or any(n < 0 for n in bracket_sizes):
        raise ValueError(f"need eta >= 2 and at most one bracket per rung, got eta {eta}, brackets {list(bracket_sizes)}")
    if mode not in (None, "min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
