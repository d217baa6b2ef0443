"""What a sweep prints while it runs: Ray Tune's status table with the metrics and parameters a
person compares, one compact line per finished eval period, and nothing else of Tune's.

Tune's newer output engine chooses its own columns (the first four reported metrics) and prints
every trial's whole config at its start; its classic CLIReporter takes the columns it is given
and prints only the table, so sweeps use that one (`RAY_AIR_NEW_OUTPUT=0`).
"""
from __future__ import annotations

import math
import os
import time

from ray import tune
from ray.tune import CLIReporter

from sweeper.compat import mark_reported, reporter_metric_and_mode

TABLE_EVERY_S = 300  # and once at the end: a short sweep prints one table, a night-long one a few dozen


def use_classic_reporter() -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def status_table(metrics: tuple[str, ...], searched: list[str], num_samples: int):
    """Tune's live table: one row per trial with its state, searched parameters and `metrics`,
    best first (Tune hands it the sweep's metric and mode)."""
    return StatusTable(metric_columns=["eval_period", *metrics], parameter_columns=sorted(searched),
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


class EvalLines(tune.Callback):
    """One line per finished eval period: trial, period, the shown metrics."""

    def __init__(self, metrics: tuple[str, ...], num_evals: int):
        self.metrics, self.num_evals = metrics, num_evals

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "eval_period" not in result:
            return
        shown = "  ".join(f"{_label(k)} {_number(result[k])}" for k in self.metrics if k in result)
        print(f"{trial.trial_id}  period {int(result['eval_period'])}/{self.num_evals}  {shown}", flush=True)


def _label(key: str) -> str:
    return {"img_per_s": "img/s"}.get(key, key)


def _number(value) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
