"""A sweep while it runs, as the driver's steps after preparation share it."""
from __future__ import annotations

from dataclasses import dataclass

from sweeper.definition import Sweep
from sweeper.kinds import Inputs, Kind
from sweeper.search.plan import Plan
from sweeper.tracking.runs import Tracking


@dataclass(frozen=True)
class Running:
    """A sweep once its shared inputs are prepared and its MLflow runs are open."""
    sweep: Sweep          # completed, validated, its GPU fraction decided
    kind: Kind
    inputs: Inputs
    tracking: Tracking
    available: dict       # the cluster's resources when the sweep started (Ray's names: CPU, GPU)
    per_trial: dict       # one trial's Ray resources, decided once (`Resources.per_trial`)
    path: str             # the Tune experiment: a local path or a URI
    quick: bool
    plan: Plan | None = None  # a budget's (sweeper.driver.planning); None without one, and on a resume
    verbose: bool = False     # the console's line per eval period (sweeper.search.console)
