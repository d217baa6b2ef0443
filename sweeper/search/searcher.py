"""Ray Tune's OptunaSearch, told what each trial became and saying where each config came from.

Ray's OptunaSearch tells Optuna a trial that ASHA stopped as COMPLETE with its last (early) value,
and an errored trial as COMPLETE too; TPE then compares rung-1 FIDs with full-budget ones as
equals. Here a trial stopped early is PRUNED (TPE ranks it by the rung it reached, from the
intermediate values reported every eval period), an errored one FAILED (ignored by TPE), and a
diverged one COMPLETE with its infinite FID (the worst value, which it is).
"""
from __future__ import annotations

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from sweeper.tracking.outcomes import OOM

WARM_START, STARTUP, TPE = "warm-start", "startup", "tpe"


class SweepSearch(OptunaSearch):
    def __init__(self, *, time_attr: str, max_t: int, n_startup_trials: int, **kwargs):
        super().__init__(**kwargs)
        self._time_attr, self._max_t, self._n_startup = time_attr, max_t, n_startup_trials
        self._n_warm = len(kwargs.get("points_to_evaluate") or ())
        self.proposed_by: dict[str, str] = {}  # trial id -> WARM_START, STARTUP or TPE
        # Trials Tune finished (completed, stopped or errored). Tune calls nothing here for the trials
        # it tears down after Ctrl-C, so a trial missing from this set was interrupted.
        self.finished: set[str] = set()

    def suggest(self, trial_id: str):
        first_ask = trial_id not in self._ot_trials
        # What TPE's own rule sees at this moment: a TPE proposal needs n_startup finished trials.
        finished = len(self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        params = super().suggest(trial_id)
        if first_ask and params is not None:
            # Enqueued warm-start points are the study's first trials (Optuna asks WAITING ones first).
            number = self._ot_trials[trial_id].number
            self.proposed_by[trial_id] = (WARM_START if number < self._n_warm
                                          else TPE if finished >= self._n_startup else STARTUP)
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.finished.add(trial_id)
        error = error or bool(result and result.get(OOM))  # out of GPU memory says nothing of the config
        if trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        if not error and result and not result.get("diverged") and result.get(self._time_attr, 0) < self._max_t:
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return None
        # Without a result Ray tells an errored trial FAIL, not COMPLETE with its last value.
        return super().on_trial_complete(trial_id, None if error else result, error)
