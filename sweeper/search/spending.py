"""A budgeted sweep's hard stop, and the search state Tune does not save.

`BudgetStop` is a Tune Stopper: it keeps each trial's latest `compute_s` (or `kimg`), which a trial
reports cumulatively across its pauses (sweeper.trial.ledger), and stops the whole experiment once
their sum reaches the budget. Trials running then have each spent at most one eval period past it.

It also admits new configurations (`admits`, asked by the searcher): a plan (sweeper.search.plan)
expects each configuration to train `periods_per_config` eval periods on average; once trials have
reported, the cost of a period is what they spent per period reported (start-up, MLflow, checkpoints
and evaluation included), not the probe's estimate. A configuration starts only while all started
ones, at that cost, fit the budget: where a period costs twice the estimate, half the configurations
start, and the budget still pays for the promotions to max_t (promotions go first: PromotionASHA).

Tune saves neither a scheduler's state nor a stopper's in its experiment checkpoint (both are
pickled once, empty, with the Tuner). `SaveSearchState` writes both, as plain JSON, next to the
experiment whenever they change; `sweeper resume` reads them back (`read_search_state`) before
`Tuner.fit()`, so the rungs continue where they were and the budget counts what was spent.
"""
from __future__ import annotations

import json

import pyarrow.fs
from ray.tune import Callback, Stopper

from sweeper.definition import Budget
from trainables.cache import write_atomic

STATE_FILE = "search_state.json"


class BudgetStop(Stopper):
    def __init__(self, budget: Budget, periods_per_config: float | None = None, cost_per_period: float | None = None):
        """`periods_per_config`, `cost_per_period`: the plan's, for `admits` (None: admit every one)."""
        self.budget = budget
        self.key = "kimg" if budget.unit == "kimg" else "compute_s"
        self.periods_per_config, self.estimate = periods_per_config, cost_per_period
        self.spent_by: dict[str, float] = {}  # trial id -> its cumulative spend, as last reported
        self.periods_by: dict[str, int] = {}  # trial id -> eval periods it reported

    def __call__(self, trial_id: str, result: dict) -> bool:
        value = result.get(self.key)
        if isinstance(value, (int, float)):
            self.spent_by[trial_id] = max(self.spent_by.get(trial_id, 0.0), float(value))
            self.periods_by[trial_id] = max(self.periods_by.get(trial_id, 0), int(result.get("eval_period", 0)))
        return False

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

    @property
    def spent(self) -> float:
        return sum(self.spent_by.values())

    def stop_all(self) -> bool:
        return self.spent >= self.budget.amount

    def state(self) -> dict:
        return {"budget": str(self.budget), "spent_by": dict(self.spent_by), "periods_by": dict(self.periods_by)}

    def restore(self, state: dict) -> None:
        self.spent_by = {k: float(v) for k, v in state["spent_by"].items()}
        self.periods_by = {k: int(v) for k, v in state["periods_by"].items()}


class SaveSearchState(Callback):
    """After each step of Tune's loop: the scheduler's and the budget's state, where either changed."""

    def __init__(self, path: str, scheduler=None, stop: BudgetStop | None = None):
        self.path, self.scheduler, self.stop = path, scheduler, stop
        self._written = None

    def on_step_end(self, iteration: int, trials: list, **info):
        self.save()

    def on_experiment_end(self, trials: list, **info):
        self.save()

    def save(self) -> None:
        state = {"scheduler": self.scheduler.state() if self.scheduler is not None else None,
                 "budget": self.stop.state() if self.stop is not None else None}
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
        write_atomic(f"{root}/{STATE_FILE}", data)
        return
    with fs.open_output_stream(f"{root}/{STATE_FILE}") as f:  # an object store's put is atomic
        f.write(data)
