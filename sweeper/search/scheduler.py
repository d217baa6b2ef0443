"""ASHA that ranks every trial but never stops a warm-start (hand-tuned) one early.

The hand-tuned baseline is then a full-budget run, so "the sweep beat the baseline" compares a
searched trial with the baseline as its authors would have run it, not with its first rung.
"""
from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sweeper.definition.space import same_params


class WarmStartASHA(ASHAScheduler):
    def __init__(self, *, warm_points: list[dict], **kwargs):
        super().__init__(**kwargs)
        self._warm_points = [dict(p) for p in warm_points]

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        # The parent records the result in its rungs first, so the trial still counts for the others.
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t \
                and any(same_params(trial.config, p) for p in self._warm_points):
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action
