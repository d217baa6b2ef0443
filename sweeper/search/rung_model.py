"""Proposals modelled on the highest rung with enough results (BOHB's rule, Falkner et al. 2018).

Under successive halving most trials stop at the first rungs; a TPE model of finished trials
alone would see few points, and Optuna's own ranking of PRUNED trials puts every one below every
COMPLETE one. Here a proposal is drawn from a TPE model of one rung r: every trial with a value at
r (its objective, `fid_best`, at eval period r) is a point, and trials in flight that have not
reached r count at the worst value seen there (a constant liar, so parallel proposals spread out).
r is the highest rung with at least `min_points` points (the sweep's n_startup_trials, TPE's own
rule; BOHB's default, the number of parameters + 1, a small sweep never reaches); for a
`RANDOM_FRACTION` of proposals (BOHB's 1/3) the proposal is random, so the model cannot lock onto
an early, misleading rung. Written by hand: Optuna samples from one study's
trials; a model per rung is BOHB's, which Ray ships only with its ConfigSpace-based searcher.
"""
from __future__ import annotations

import math
import random
import warnings

import optuna
from optuna.trial import TrialState, create_trial

RANDOM_FRACTION = 1 / 3


def rung_points(trials, rung: int) -> tuple[list, list]:
    """(trials with a finite value at `rung`, trials in flight without one)."""
    at, flying = [], []
    for t in trials:
        value = t.intermediate_values.get(rung)
        if value is not None and math.isfinite(value) and t.state in (TrialState.RUNNING, TrialState.PRUNED,
                                                                       TrialState.COMPLETE):
            at.append((t, value))
        elif t.state == TrialState.RUNNING and t.params:
            flying.append(t)
    return at, flying


def propose(study: optuna.Study, ask, rungs, *, direction: str, seed: int, min_points: int,
            multivariate_group: bool) -> tuple[dict, int | None]:
    """(params, the rung modelled or None for a random draw). `ask(study)` makes one trial of the
    sweep's space in `study` and returns its params (a dict space or a define-by-run function)."""
    trials = study.get_trials(deepcopy=False)
    draw = random.Random(f"{seed}:{len(trials)}")
    for rung in sorted(rungs, reverse=True):
        at, flying = rung_points(trials, rung)
        if len(at) >= min_points and draw.random() >= RANDOM_FRACTION:
            return ask(_rung_study(at, flying, direction, seed + len(trials), multivariate_group)), rung
        if len(at) >= min_points:
            break
    random_study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed + len(trials)))
    return ask(random_study), None


def _rung_study(at, flying, direction: str, seed: int, group: bool) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, multivariate=True, group=group)
    study = optuna.create_study(direction=direction, sampler=sampler)
    worst = max(v for _, v in at) if direction == "minimize" else min(v for _, v in at)
    for t, value in at + [(t, worst) for t in flying]:
        study.add_trial(create_trial(params=t.params, distributions=t.distributions, value=value))
    return study
