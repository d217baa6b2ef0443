"""A population member's lineage (PBT, PB2), carried in every checkpoint it writes.

A member restarted with another member's checkpoint (an exploit) trains that model on, with mutated
hyperparameters, in a new MLflow run of its own: the run of its next generation, tagged with the run
and eval period it was cloned from (sweeper.tracking.lineage reads them back into a table). The
checkpoint says which model it holds: `sweeper_lineage.json` lists the segments of its history,
oldest first, each the run that trained it from `from_period` on and the mutated values it trained
with. A clone copies its donor's segments and adds its own; the registered generator's schedule
(`schedule.json`) is the list in the checkpoint it was made from.

Which generation a start is comes from the Tune config (GENERATION_KEY, counted by the scheduler);
whether it starts from its own checkpoint or a donor's, from the checkpoint's last segment.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sweeper.tracking.lineage import CLONED_AT_TAG, CLONED_FROM_RUN_TAG, CLONED_FROM_TRIAL_TAG

LINEAGE_FILE = "sweeper_lineage.json"


@dataclass(frozen=True)
class Lineage:
    eval_period: int     # the checkpoint's
    segments: tuple      # oldest first: {"trial_id", "run_id", "generation", "from_period", "values"}

    @property
    def last(self) -> dict:
        return self.segments[-1]

    def donor_of(self, trial_id: str) -> dict | None:
        """The segment `trial_id` clones when it starts from this checkpoint; None: it is its own."""
        return self.last if self.last["trial_id"] != trial_id else None


def read_lineage(directory) -> Lineage | None:
    """The lineage a checkpoint carries; None without a checkpoint or outside a population."""
    path = Path(directory) / LINEAGE_FILE if directory else None
    if path is None or not path.exists():
        return None
    saved = json.loads(path.read_text())
    return Lineage(int(saved["eval_period"]), tuple(saved["segments"]))


def write_lineage(directory, lineage: Lineage) -> None:
    (Path(directory) / LINEAGE_FILE).write_text(json.dumps(
        {"eval_period": lineage.eval_period, "segments": list(lineage.segments)}))


def clone_tags(donor: dict | None, cloned_at: int | None) -> dict:
    """The tags of a new generation's run: the run and the period whose checkpoint it took."""
    if donor is None:
        return {}
    return {CLONED_FROM_RUN_TAG: donor["run_id"], CLONED_FROM_TRIAL_TAG: donor["trial_id"],
            CLONED_AT_TAG: str(cloned_at)}


def continued(origin: Lineage | None, *, trial_id: str, run_id: str, generation: int, values: dict) -> tuple:
    """The segments a checkpoint written by this start carries: the origin's, plus this run's own
    where the origin is another's (a clone) or there is none (a first start)."""
    if origin is not None and origin.donor_of(trial_id) is None and origin.last["run_id"] == run_id:
        return origin.segments
    kept = origin.segments if origin is not None else ()
    start = origin.eval_period + 1 if origin is not None else 1
    return (*kept, {"trial_id": trial_id, "run_id": run_id, "generation": generation, "from_period": start,
                    "values": dict(values)})
