"""What a trial has spent and the best it has reached, carried across pauses and retries.

A trial reports, with every eval period, `<metric>_best` (the sweep's objective: the best per-eval
value so far, the value of a checkpoint Tune keeps) and `compute_s` (device-seconds used so far:
wall time since each start of its process x the devices it holds, GPUs where it holds any, CPUs
otherwise), and, where the trainable reports each period's training seconds (`train_s`: the GAN
loop does), `train_compute_s`: their sum x the devices held, the compute of training alone, without
the start-up, evaluation and checkpoints that every configuration pays alike (what rungs in compute
count: sweeper.search.promotion). All continue across a pause or a retry: the ledger is written into
every checkpoint and read back from the one the trial resumes from. Time a crashed attempt spent after its last
checkpoint is not counted (nothing recorded it); the time to start and restore is.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from sweeper.search.cost import TRAIN_COMPUTE_S, TRAIN_S

LEDGER_FILE = "sweeper_ledger.json"


class Ledger:
    def __init__(self, metric: str, mode: str, held: float, restore_from: str | None = None,
                 since: float | None = None):
        """`since`: when this process's work on the trial began (time.monotonic(); default now)."""
        self.metric, self.mode, self.held = metric, mode, held
        self.worst = math.inf if mode == "min" else -math.inf
        self.best, self.compute_s, self.train_compute_s = self.worst, 0.0, 0.0
        saved = Path(restore_from) / LEDGER_FILE if restore_from else None
        if saved is not None and saved.exists():
            state = json.loads(saved.read_text())
            self.best, self.compute_s = float(state["best"]), float(state["compute_s"])
            self.train_compute_s = float(state.get("train_compute_s", 0.0))
        self._since = time.monotonic() if since is None else since

    def spent_as(self, compute_s: float, train_compute_s: float) -> None:
        """Spending carried on from elsewhere than the checkpoint: a PBT clone keeps its donor's
        best but goes on from its own spending (sweeper.trial.lineage)."""
        self.compute_s, self.train_compute_s = float(compute_s), float(train_compute_s)

    @property
    def objective(self) -> str:
        return f"{self.metric}_best"

    def add(self, metrics: dict) -> dict:
        """`metrics` with the objective and `compute_s`. A diverged or out-of-memory result
        reports the worst objective: the scheduler ranks it last; its checkpoints stay what they were."""
        now = time.monotonic()
        self.compute_s += (now - self._since) * self.held
        self._since = now
        value = metrics.get(self.metric)
        broken = bool(metrics.get("diverged")) or bool(metrics.get("oom"))
        if not broken and isinstance(value, (int, float)) and not math.isnan(value):
            self.best = min(self.best, value) if self.mode == "min" else max(self.best, value)
        spent = {"compute_s": self.compute_s}
        if isinstance(metrics.get(TRAIN_S), (int, float)):
            self.train_compute_s += metrics[TRAIN_S] * self.held
            spent[TRAIN_COMPUTE_S] = self.train_compute_s
        return {**metrics, self.objective: self.worst if broken else self.best, **spent}

    def save_in(self, directory: str | Path) -> None:
        (Path(directory) / LEDGER_FILE).write_text(json.dumps(
            {"best": self.best, "compute_s": self.compute_s, "train_compute_s": self.train_compute_s}))
