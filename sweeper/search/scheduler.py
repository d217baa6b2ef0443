"""ASHA that ranks every trial but never stops a warm-start (hand-tuned) one early.

The hand-tuned baseline is then a full-budget run, so "the sweep beat the baseline" compares a
searched trial with the baseline as its authors would have run it, not with its first rung.

Which trial is a warm start is the searcher's record (`SweepSearch.proposed_by`), not its params:
a TPE proposal that repeats a warm start's values (a categorical-only space) is a searched trial
and is stopped like any other. Tune hands a scheduler the trial, not the searcher, so the scheduler
holds the searcher itself (both live in the driver); it reads `proposed_by` at each decision, so a
searcher whose state a resume put back (`OptunaSearch.restore` replaces its `__dict__`) is read as
it is then.
"""
from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sweeper.compat import asha_max_t, asha_time_attr, uncount_asha_stop
from sweeper.search.searcher import WARM_START


class WarmStartASHA(ASHAScheduler):
    # A scheduler pickled before it held its searcher (a resume of such a sweep) gets it from the
    # driver (sweeper.driver.run._tuner); until then it knows no warm start.
    searcher = None

    def __init__(self, *, searcher, **kwargs):
        """`searcher`: the SweepSearch whose `proposed_by` says which trials are warm starts."""
        super().__init__(**kwargs)
        self.searcher = searcher

    def is_warm_start(self, trial_id: str) -> bool:
        return self.searcher is not None and self.searcher.proposed_by.get(trial_id) == WARM_START

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        # The parent records the result in its rungs first, so the trial still counts for the others.
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(asha_time_attr(self), 0) < asha_max_t(self) \
                and self.is_warm_start(trial.trial_id):
            uncount_asha_stop(self)
            return TrialScheduler.CONTINUE
        return action
