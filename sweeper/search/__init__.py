"""How a sweep searches: Optuna's TPE told what each trial became (`SweepSearch`), the scheduler,
a trial's measured GPU footprint, the Ray Tune Tuner built from a Sweep, and what the console shows."""
from sweeper.search.searcher import SweepSearch

__all__ = ["SweepSearch"]
