"""MLflow, and nothing of Ray: a sweep's experiment, parent and trial runs (`Tracking`), what became
of each trial, the registry and its `@best` alias, `sweeper status`/`export`, the parent run's
figures and summary files."""
from sweeper.tracking.runs import Tracking

__all__ = ["Tracking"]
