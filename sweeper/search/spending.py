"""A budgeted sweep's spending: its hard stop, which configurations may start, and the search
state Tune does not save.

`Spending` keeps each trial's latest `compute_s` (or `kimg`), which a trial reports cumulatively
across its pauses (sweeper.trial.ledger), and the eval periods it reported. `BudgetStop`, a Tune
Stopper, stops the whole experiment once their sum reaches the budget; trials running then have
each spent at most one eval period past it. The searcher asks `admits` before a new configuration:
a plan (sweeper.search.plan) expects each configuration to train `periods_per_config` eval periods
on average; once trials have reported, the cost of a period is what they spent per period reported
(start-up, MLflow, checkpoints and evaluation included), not the probe's estimate. A configuration
starts only while all started ones, at that cost, fit the budget: where a period costs twice the
estimate, half the configurations start, and the budget still pays for the promotions to max_t.

Tune pickles a Stopper with its experiment state and unpickles a copy on restore, while the searcher
and the callbacks keep the Tuner's own objects: several copies would each count part of the
spending. So the Spending lives in this process's registry, by the experiment's path, and every
copy of `BudgetStop` finds it there (`spending_of`); the driver registers it (`register_spending`) before `fit()`, from
the saved state on a resume. Written by hand: Tune has no shared state between these parts.

Tune saves neither a scheduler's state nor this Spending where a resume could read them: both are
written, as plain JSON, to `search_state.json` next to the experiment whenever they change
(`SaveSearchState`), and read back (`read_search_state`) before `Tuner.fit()` on a resume.
"""
from __future__ import annotations

import json

import pyarrow.fs
from ray.tune import Callback, Stopper

from sweeper.definition import Budget, parse_budget
from trainables.cache import write_whole

STATE_FILE = "search_state.json"
_REGISTRY: dict[str, "Spending"] = {}


class Spending:
    def __init__(self, budget: Budget, periods_per_config: float | None = None, cost_per_period: float | None = None):
        """`periods_per_config`, `cost_per_period`: the plan's, for `admits` (None: admit every one)."""
        self.budget = budget
        self.key = "kimg" if budget.unit == "kimg" else "compute_s"
        self.periods_per_config, self.estimate = periods_per_config, cost_per_period
        self.spent_by: dict[str, float] = {}  # trial id -> its cumulative spend, as last reported
        self.periods_by: dict[str, int] = {}  # trial id -> eval periods it reported

    def record(self, trial_id: str, result: dict) -> None:
        value = result.get(self.key)
        if isinstance(value, (int, float)):
            self.spent_by[trial_id] = max(self.spent_by.get(trial_id, 0.0), float(value))
            self.periods_by[trial_id] = max(self.periods_by.get(trial_id, 0), int(result.get("eval_period", 0)))

    @property
    def spent(self) -> float:
        return sum(self.spent_by.values())

    def exhausted(self) -> bool:
        return self.spent >= self.budget.amount

    def cost_per_period(self) -> float | None:
        """As measured by the trials so far; the plan's estimate before any reported."""
        periods = sum(self.periods_by.values())
        return self.spent / periods if periods else self.estimate

    def admits(self, started: int) -> bool:
        """Whether a configuration may start after `started` others."""
        cost = self.cost_per_period()
        if self.periods_per_config is None or cost is None:
            return True
        return (started + 1) * self.periods_per_config * cost <= self.budget.amount

    def state(self) -> dict:
        return {"budget": str(self.budget), "periods_per_config": self.periods_per_config,
                "cost_per_period": self.estimate, "spent_by": dict(self.spent_by), "periods_by": dict(self.periods_by)}

    @classmethod
    def from_state(cls, state: dict) -> "Spending":
        spending = cls(parse_budget(state["budget"]), state["periods_per_config"], state["cost_per_period"])
        spending.spent_by = {k: float(v) for k, v in state["spent_by"].items()}
        spending.periods_by = {k: int(v) for k, v in state["periods_by"].items()}
        return spending


def register_spending(path: str, spending: Spending) -> Spending:
    """The Spending of the experiment at `path`, for every copy of its BudgetStop in this process."""
    _REGISTRY[path] = spending
    return spending


def spending_of(path: str) -> Spending:
    return _REGISTRY[path]


class BudgetStop(Stopper):
    """Tune's Stopper for the Spending registered under `path`."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, trial_id: str, result: dict) -> bool:
        spending_of(self.path).record(trial_id, result)
        return False

    def stop_all(self) -> bool:
        return spending_of(self.path).exhausted()


class SaveSearchState(Callback):
    """After each step of Tune's loop: the scheduler's state and the Spending, where either changed."""

    def __init__(self, path: str, scheduler=None):
        self.path, self.scheduler = path, scheduler
        self._written = None

    def on_step_end(self, iteration: int, trials: list, **info):
        self.save()

    def on_experiment_end(self, trials: list, **info):
        self.save()

    def save(self) -> None:
        spending = _REGISTRY.get(self.path)
        state = {"scheduler": self.scheduler.state() if self.scheduler is not None else None,
                 "budget": spending.state() if spending is not None else None}
        text = json.dumps(state, sort_keys=True)
        if text != self._written:
            _write(self.path, text.encode())
            self._written = text


def read_search_state(path: str) -> dict | None:
    """What `SaveSearchState` last wrote for the experiment at `path` (None: nothing yet)."""
    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    if fs.get_file_info(f"{root}/{STATE_FILE}").type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(f"{root}/{STATE_FILE}") as f:
        return json.loads(f.readall())


def _write(path: str, data: bytes) -> None:
    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        fs.create_dir(root, recursive=True)
    write_whole(fs, f"{root}/{STATE_FILE}", data)
