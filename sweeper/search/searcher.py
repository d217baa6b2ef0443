"""Ray Tune's OptunaSearch, told what each trial became and saying where each config came from.

Ray's OptunaSearch tells Optuna a trial that ASHA stopped as COMPLETE with its last (early) value,
and an errored trial as COMPLETE too; TPE then compares rung-1 FIDs with full-budget ones as
equals. Here a trial stopped early (or paused at a rung and never promoted) is PRUNED (TPE ranks
it by the rung it reached, from the intermediate values reported every eval period), an errored
one FAILED (ignored by TPE), and so is a diverged one: its FID is not a value of its config worth
modelling, and an infinite one would dominate TPE's split. The value told is the sweep's objective
(`fid_best`), the best the trial reached, as for the scheduler and the final candidates.
"""
from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeper.compat import (
    completed_trials_of,
    frozen_trial,
    live_trial,
    optuna_study_of,
    optuna_trials_of,
    search_space_of,
    suggest_define_by_run,
)
from sweeper.search import rung_model
from sweeper.search.spending import spending_of
from sweeper.tracking.outcomes import OOM

WARM_START, WARM_NEIGHBOUR, STARTUP, TPE = "warm-start", "warm-neighbour", "startup", "tpe"
RANDOM = "random"  # under successive halving: the rung model's share of random proposals


class SweepSearch(OptunaSearch):
    # A searcher pickled before warm starts had overrides (`sweeper resume` of such a sweep) has none.
    _warm_overrides: tuple = ()
    # One pickled before warm starts had neighbours has none (sweeper.definition.warm).
    _n_neighbours = 0
    _neighbour_overrides: tuple = ()
    # A budgeted sweep's experiment path, under which its Spending is registered
    # (sweeper.search.spending): no new configuration while the budget, at the cost per period
    # measured so far, cannot pay for it. Set by the Tuner's builder.
    budget_path = None
    closed_by_budget = False  # no configuration started once the budget could not pay for another
    # Under successive halving (set by the Tuner's builder): the rungs whose results TPE models
    # (sweeper.search.rung_model) and its seed. Empty: one model of finished trials, Optuna's own.
    rungs: tuple = ()
    model_seed = 0
    # Rungs in compute (sweeper.search.promotion.Rungs): a trial's value is told once per rung it
    # reaches, at the rung's horizon in periods, whatever period it reached it at; None: at every period.
    rung_clock = None
    # A population (PBT): its values are not told per period. A member's periods repeat after it
    # takes another's checkpoint, and its curve is then several models'; it proposes nothing after
    # the initial population anyway.
    per_period = True

    def __init__(self, *, time_attr: str, max_t: int, n_startup_trials: int, warm_overrides=(),
                 neighbour_overrides=(), **kwargs):
        """`points_to_evaluate`: the warm starts' params, then their neighbours'; `warm_overrides`:
        per warm start, the config values its trial fixes beyond the params Optuna enqueues (a whole
        published config's batch size, LR schedule, ...; Sweep.warm_overrides); `neighbour_overrides`:
        the same per neighbour, one for each of the last points (their number)."""
        super().__init__(**kwargs)
        self._time_attr, self._max_t, self._n_startup = time_attr, max_t, n_startup_trials
        self._n_neighbours = len(neighbour_overrides)
        self._n_warm = len(kwargs.get("points_to_evaluate") or ()) - self._n_neighbours
        self._warm_overrides = tuple(dict(overrides) for overrides in warm_overrides)
        self._neighbour_overrides = tuple(dict(overrides) for overrides in neighbour_overrides)
        self.proposed_by: dict[str, str] = {}  # trial id -> WARM_START, WARM_NEIGHBOUR, STARTUP, TPE or RANDOM
        # Trials Tune finished (completed, stopped or errored). Tune calls nothing here for the trials
        # it tears down after Ctrl-C, so a trial missing from this set was interrupted.
        self.finished: set[str] = set()

    def suggest(self, trial_id: str):
        study, trials = optuna_study_of(self), optuna_trials_of(self)
        first_ask = trial_id not in trials
        if first_ask and self.budget_path is not None and not spending_of(self.budget_path).admits(len(trials)):
            if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                # Trials running or paused: the measured cost per period falls as they spread their
                # start-up over more periods, and PromotionASHA resumes the best paused one meanwhile.
                return None
            self.closed_by_budget = True
            return Searcher.FINISHED
        # What TPE's own rule sees at this moment: a TPE proposal needs n_startup finished trials;
        # under successive halving, n_startup trials with a result at the first rung (most of them
        # wait there paused, unfinished for Optuna).
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        informed = self._at_first_rung() if self.rungs else finished
        if first_ask and self.rungs and informed >= self._n_startup and \
                not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            self._propose_from_rungs(trial_id)
        params = super().suggest(trial_id)
        if params is None:
            return None
        # Enqueued points are the study's first trials (Optuna asks WAITING ones first): trial number
        # i is warm start i, then neighbour i - n_warm, whatever its params look like.
        number = trials[trial_id].number
        if first_ask:
            self.proposed_by[trial_id] = self._origin(trial_id, number, informed)
            if number < self._n_warm:  # which warm start it is, for the summary (`warm_starts`)
                self.__dict__.setdefault("warm_start_of", {})[trial_id] = number
        # Only the trial's Tune config carries the overrides (run_trial applies it): Optuna's study
        # and its TPE model know the searched params alone.
        return {**params, **self._overrides(number)}

    def _origin(self, trial_id: str, number: int, informed: int) -> str:
        if number < self._n_warm:
            return WARM_START
        if number < self._n_warm + self._n_neighbours:
            return WARM_NEIGHBOUR
        modelled = getattr(self, "modelled_on", {})
        if trial_id in modelled:
            return TPE if modelled[trial_id] is not None else RANDOM
        return TPE if informed >= self._n_startup else STARTUP

    def warm_starts(self) -> dict[str, int | None]:
        """Trial id -> which warm start (its index in Sweep.warm_start) of every trial proposed as
        one: the record that tells warm starts from the rest, never their params. None for one
        asked by a searcher pickled before the index was kept."""
        index = self.__dict__.get("warm_start_of", {})
        return {trial_id: index.get(trial_id) for trial_id, origin in self.proposed_by.items() if origin == WARM_START}

    def _overrides(self, number: int) -> dict:
        """The enqueued point `number`'s fixed overrides; {} for a searched trial, and for a warm
        start of a searcher pickled before warm starts had overrides."""
        if number < self._n_warm:
            return self._warm_overrides[number] if number < len(self._warm_overrides) else {}
        if number - self._n_warm < len(self._neighbour_overrides):
            return self._neighbour_overrides[number - self._n_warm]
        return {}

    def on_trial_result(self, trial_id: str, result: dict):
        # At the trial's eval period, not Tune's training_iteration: the rungs are eval periods, and
        # a retried trial's repeated periods land on the steps they had.
        trials = optuna_trials_of(self)
        if self.per_period and trial_id in trials and trial_id not in completed_trials_of(self) \
                and self._time_attr in result:
            step = self._step(trial_id, result)
            if step is not None:
                trials[trial_id].report(result[self.metric], step)

    def _step(self, trial_id: str, result: dict) -> int | None:
        """The step to tell a result at (the rung model reads the values at the rung horizons)."""
        clock = self.rung_clock
        if clock is None or not clock.compute:
            return int(result[self._time_attr])
        k = clock.reached(result, self._time_attr)
        told = self.__dict__.setdefault("_rungs_told", {}).setdefault(trial_id, set())
        if k is None or clock.periods[k] in told:
            return None
        told.add(clock.periods[k])
        return clock.periods[k]

    def _at_first_rung(self) -> int:
        return sum(self.rungs[0] in t.intermediate_values for t in optuna_study_of(self).get_trials(deepcopy=False))

    def _propose_from_rungs(self, trial_id: str) -> None:
        """Enqueue the rung model's proposal (or a random one), which the next ask takes."""
        study = optuna_study_of(self)
        params, rung = rung_model.propose(
            study, self._ask_params, self.rungs, direction=study.direction.name.lower(),
            seed=self.model_seed, min_points=self._n_startup, multivariate_group=callable(search_space_of(self)))
        study.enqueue_trial(params)
        self.modelled_on = {**getattr(self, "modelled_on", {}), trial_id: rung}

    def _ask_params(self, study) -> dict:
        space = search_space_of(self)
        if callable(space):
            trial = study.ask()
            suggest_define_by_run(self, space, trial)
        else:
            trial = study.ask(fixed_distributions=space)
        return trial.params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.finished.add(trial_id)
        # Out of GPU memory says nothing of the config; a diverged trial has no value to tell.
        error = error or bool(result and (result.get(OOM) or result.get("diverged")))
        if trial_id in completed_trials_of(self):
            # Re-run by a resume (Tune's resume_errored) after it was told FAIL; anything else
            # repeated, Ray's own warning.
            if not self.retell(trial_id, result, error):
                return super().on_trial_complete(trial_id, result, error)
            return None
        if not error and result:
            self._report_ending(trial_id, result)
        if not error and result and result.get(self._time_attr, 0) < self._max_t:
            optuna_study_of(self).tell(optuna_trials_of(self)[trial_id], state=TrialState.PRUNED)
            completed_trials_of(self).add(trial_id)
            return None
        # Without a result Ray tells an errored trial FAIL, not COMPLETE with its last value.
        return super().on_trial_complete(trial_id, None if error else result, error)

    def _report_ending(self, trial_id: str, result: dict) -> None:
        """Report the result a trial ended on, once. Tune calls no `on_trial_result` for the result
        its scheduler stops a trial on (its tune_controller: "only updating search alg if the trial
        is not to be stopped"), so without this a trial stopped at a rung would be ranked by the
        period before it, and one stopped at its first period would have no value at all."""
        trials = optuna_trials_of(self)
        if trial_id not in trials or self._time_attr not in result:
            return
        clock = self.rung_clock
        if clock is None or not clock.compute:  # compute rungs: `_step` tells each rung once itself
            reported = frozen_trial(optuna_study_of(self), trials[trial_id]).intermediate_values
            if int(result[self._time_attr]) in reported:
                return
        self.on_trial_result(trial_id, result)

    def retell(self, trial_id: str, result: dict | None, error: bool = False) -> bool:
        """Tell the study of a trial that finished after it was told FAIL (a resume re-runs errored
        trials), as a new Optuna trial with the same params (Optuna cannot tell a finished trial
        again), the old one's intermediate values and this result's, and the outcome
        `on_trial_complete` gives any trial: PRUNED below `max_t`, else COMPLETE with its value.
        The Tune trial's Optuna trial is the new one from then on (searcher_trials.json shows it);
        the FAIL one stays, ignored by TPE and the importances. Returns whether it told: nothing for
        a trial that failed again, one not told FAIL, or one told again already (sweeper.driver
        .resume's callback and this searcher may both hand it over)."""
        error = error or not result or bool(result.get(OOM) or result.get("diverged"))
        retold = self.__dict__.setdefault("_retold", {})  # Tune trial id -> the new Optuna trial's number
        study, trials = optuna_study_of(self), optuna_trials_of(self)
        if error or trial_id in retold or trial_id not in trials:
            return False
        old = frozen_trial(study, trials[trial_id])
        value = result.get(self.metric)
        pruned = result.get(self._time_attr, 0) < self._max_t
        if old.state != TrialState.FAIL or value is None or not math.isfinite(value):
            return False
        steps = dict(old.intermediate_values)
        step = self._step(trial_id, result) if self._time_attr in result else None
        if step is not None:
            steps[step] = value
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED if pruned else TrialState.COMPLETE, value=None if pruned else value,
            params=old.params, distributions=old.distributions, intermediate_values=steps,
            user_attrs={**old.user_attrs, "sweeper.retold_from": old.number}))
        new = study.get_trials(deepcopy=False)[-1]
        trials[trial_id] = live_trial(study, new)
        retold[trial_id] = new.number
        return True
