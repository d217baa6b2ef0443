"""What a sweep prints while it runs: one line per trial that ends, saying where the sweep
stands (a live line on a terminal too), and Ray Tune's table of the trials at the end; with
`--verbose` (and `--quick`) also one compact line per finished eval period and the table every
few minutes. Nothing else of Tune's. So a 1,000-trial sweep prints about a thousand lines, not a
line per period of every trial.

Tune's newer output engine chooses its own columns (the first four reported metrics) and prints
every trial's whole config at its start; its classic CLIReporter takes the columns it is given
and prints only the table, so sweeps use that one (`RAY_AIR_NEW_OUTPUT=0`).
"""
from __future__ import annotations

import math
import os
import sys
import time

from ray import tune
from ray.tune import CLIReporter

from sweeper.compat import mark_reported, reporter_metric_and_mode
from sweeper.search.spending import spending_of

TABLE_EVERY_S = 300  # and once at the end: a short sweep prints one table, a night-long one a few dozen


def use_classic_reporter() -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def status_table(metrics: tuple[str, ...], searched: list[str], num_samples: int, every_few_minutes: bool = True):
    """Tune's table every few minutes and at the end: one row per trial with its state, searched
    parameters and `metrics`, best first (Tune hands it the sweep's metric and mode). Without
    `every_few_minutes`, none at all: at Tune's verbosity 1 its last report has no table, only a
    status block that the trials' own lines and the driver's summary already say better."""
    table = StatusTable if every_few_minutes else SilentTable
    return table(metric_columns=["eval_period", *metrics], parameter_columns=sorted(searched),
                 total_samples=num_samples, max_report_frequency=TABLE_EVERY_S,
                 print_intermediate_tables=True, max_progress_rows=30)


class StatusTable(CLIReporter):
    """CLIReporter without its first table (every trial PENDING, before anything happened), its
    rows best first. Sorted here: Tune's `sort_by_metric` fails on a trial without the metric (one
    a budget's stop ended before its first eval)."""

    def setup(self, *args, **kwargs):
        super().setup(*args, **kwargs)
        mark_reported(self, time.time())

    def report(self, trials, done, *sys_info):
        super().report(sorted(trials, key=self._rank), done, *sys_info)

    def _rank(self, trial) -> tuple:
        metric, mode = reporter_metric_and_mode(self)
        value = trial.last_result.get(metric) if metric else None
        if not isinstance(value, (int, float)) or math.isnan(value):
            return (1, 0.0)
        return (0, -value if mode == "max" else value)


class SilentTable(StatusTable):
    def should_report(self, trials, done: bool = False) -> bool:
        return False


class EvalLines(tune.Callback):
    """One line per finished eval period: trial, period, the shown metrics (`--verbose` and `--quick`)."""

    def __init__(self, metrics: tuple[str, ...], num_evals: int):
        self.metrics, self.num_evals = metrics, num_evals

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "eval_period" not in result:
            return
        shown = "  ".join(f"{_label(k)} {_number(result[k])}" for k in self.metrics if k in result)
        print(f"{trial.trial_id}  period {int(result['eval_period'])}/{self.num_evals}  {shown}", flush=True)


class TrialLines(tune.Callback):
    """One line per trial that ends (its last period and best `objective`), with where the sweep
    stands: trials ended, running and errored, the best so far and, with a budget, the share spent.
    On a terminal the same standing is also a live line, rewritten in place at most once a second.
    A paused trial (promotion) has not ended: it gets its line when it does."""

    def __init__(self, objective: str, mode: str, num_evals: int, budget_path: str | None = None):
        self.objective, self.mode, self.num_evals, self.budget_path = objective, mode, num_evals, budget_path
        self.best: tuple[float, str] | None = None
        self.live = sys.stdout.isatty()
        self._drawn = 0.0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._note(trial.trial_id, result)
        if self.live and time.monotonic() - self._drawn >= 1.0:
            self._drawn = time.monotonic()
            print(f"\r{self.standing(trials)}\033[K", end="", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trials, trial, "ended")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trials, trial, "failed")

    def _ended(self, trials, trial, how: str) -> None:
        result = trial.last_result or {}
        self._note(trial.trial_id, result)
        value = result.get(self.objective)
        line = (f"{trial.trial_id}  {how} at period {int(result.get('eval_period', 0))}/{self.num_evals}  "
                f"{self.objective} {_number(value) if value is not None else '-'}  | "
                f"{self.standing(trials, ending=(trial, 'ERROR' if how == 'failed' else 'TERMINATED'))}")
        print(f"\r{line}\033[K" if self.live else line, flush=True)

    def _note(self, trial_id: str, result: dict) -> None:
        value = result.get(self.objective)
        if isinstance(value, (int, float)) and math.isfinite(value):
            sign = 1 if self.mode == "min" else -1
            if self.best is None or sign * value < sign * self.best[0]:
                self.best = (float(value), trial_id)

    def standing(self, trials, ending: tuple | None = None) -> str:
        """`ending`: (the trial whose end is being told, the status Tune gives it right after)."""
        def status(t) -> str:
            return ending[1] if ending is not None and t is ending[0] else t.status
        ended = sum(status(t) == "TERMINATED" for t in trials)
        running = sum(status(t) == "RUNNING" for t in trials)
        failed = sum(status(t) == "ERROR" for t in trials)
        parts = [f"{ended} ended, {running} running" + (f", {failed} failed" if failed else "")]
        if self.best is not None:
            parts.append(f"best so far {_number(self.best[0])} ({self.best[1]})")
        spent = self._spent()
        if spent is not None:
            parts.append(f"budget {spent:.0%} spent")
        return " · ".join(parts)

    def _spent(self) -> float | None:
        try:
            spending = spending_of(self.budget_path) if self.budget_path else None
        except KeyError:
            return None
        return spending.spent / spending.budget.amount if spending is not None else None


def _label(key: str) -> str:
    return {"img_per_s": "img/s"}.get(key, key)


def _number(value) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
