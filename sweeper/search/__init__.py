"""How a sweep searches: Optuna's TPE told what each trial became (`SweepSearch`) and modelled on
the rungs, the schedulers (promotion-based successive halving, Ray's ASHA), a budget's plan, cost
and spending, a trial's measured GPU footprint, the Ray Tune Tuner built from a Sweep, and what
the console shows."""
from sweeper.search.searcher import SweepSearch

__all__ = ["SweepSearch"]
