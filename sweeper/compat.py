"""Every private name of Ray Tune, Optuna and MLflow that sweeper relies on, each behind one small function.

A private name may change in any release, and then a sweep breaks at run time, maybe hours in. Here
each one is named in a single place, and `tests/test_compat.py` checks each against the installed
versions with real objects: a changed name fails there, naming the library, its version and the name.
pyproject.toml caps these libraries at the next release beyond the tested one.

Each function's docstring says which private name it wraps and why no public API does the job. Where a
public API does it, that one is used instead (`frozen_trial`).

This module wraps objects the caller already has and imports no Ray, MLflow or torch (an
import-linter contract holds it to that), so every layer can use it, `sweeper.definition` included.
For the same reason `alive_nodes` reads what `ray.nodes()` returned and does not call it.
torch's private names are in `trainables/compat.py` instead, since trainables must not import sweeper.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import optuna

# --- Ray Tune: the Tuner ----------------------------------------------------------------------------


def tune_config_of(tuner):
    """The TuneConfig a restored `tune.Tuner` will run with (`tuner._local_tuner._tune_config`).

    `Tuner.restore` rebuilds the searcher and the scheduler from the experiment's files. The driver
    needs both: it gives the scheduler its saved state and reads the searcher's record. Tuner has no
    public getter for either."""
    return tuner._local_tuner._tune_config


def run_config_of(tuner):
    """The RunConfig that `fit` will use (`tuner._local_tuner.get_run_config()`).

    `Tuner.restore` takes no callbacks, so the driver adds them to this object. Tuner has no public
    getter for it."""
    return tuner._local_tuner.get_run_config()


# --- Ray Tune: OptunaSearch ---------------------------------------------------------------------------


def optuna_study_of(searcher) -> optuna.Study:
    """The Optuna study behind a Ray `OptunaSearch` (`searcher._ot_study`).

    It exists once `set_search_properties` (or a space given at construction) has set the searcher
    up. OptunaSearch builds the study itself and does not expose it. The trial table, the rung model
    and the parameter importances all read it."""
    return searcher._ot_study


def optuna_trials_of(searcher) -> dict:
    """The Optuna trial of each Tune trial id (`searcher._ot_trials`).

    This is the dict itself, not a copy: `SweepSearch.retell` points a Tune trial at a new Optuna
    trial by assigning into it. OptunaSearch keeps it private."""
    return searcher._ot_trials


def completed_trials_of(searcher) -> set:
    """The Tune trial ids OptunaSearch has already told the study
    (`searcher._completed_trials`).

    This is the set itself: `SweepSearch` tells a pruned trial on its own and adds it here, so that
    Ray's `on_trial_complete` does not tell it again."""
    return searcher._completed_trials


def search_space_of(searcher):
    """The space OptunaSearch asks from (`searcher._space`).

    It is a dict of Optuna distributions, or a define-by-run function. Set by `set_search_properties`."""
    return searcher._space


def suggest_define_by_run(searcher, space, trial) -> dict:
    """Run a define-by-run `space` on an Optuna `trial` the way OptunaSearch does
    (`searcher._suggest_from_define_by_run_func`).

    Ray's version checks what the function returns and warns when it is slow. Calling `space(trial)`
    directly would skip both."""
    return searcher._suggest_from_define_by_run_func(space, trial)


# --- Ray Tune: schedulers, limiters, reporters ----------------------------------------------------


def asha_time_attr(scheduler) -> str:
    """The result key that an `ASHAScheduler` counts time in (`scheduler._time_attr`)."""
    return scheduler._time_attr


def asha_max_t(scheduler) -> int:
    """An `ASHAScheduler`'s max_t, the time at which every trial ends (`scheduler._max_t`)."""
    return scheduler._max_t


def uncount_asha_stop(scheduler) -> None:
    """Take back one stop from an `ASHAScheduler`'s count (`scheduler._num_stopped -= 1`).

    This is for a trial it decided to STOP that the caller continues instead. The count is what ASHA's
    `debug_string` reports as num_stopped."""
    scheduler._num_stopped -= 1


def limits_concurrency(limiter) -> bool:
    """Whether a `ConcurrencyLimiter` limits at all (`limiter._limit_concurrency`).

    It is False when the wrapped searcher enforces the limit itself (its `set_max_concurrency`
    returned True)."""
    return limiter._limit_concurrency


def reporter_metric_and_mode(reporter) -> tuple[str | None, str | None]:
    """The metric and mode that Tune handed a `CLIReporter` (`reporter._metric`, `reporter._mode`).

    `set_search_properties` sets them, and there is no public getter."""
    return reporter._metric, reporter._mode


def mark_reported(reporter, when: float) -> None:
    """Record that a `CLIReporter` printed its table at `when` (`reporter._last_report_time`).

    The reporter prints again only after `max_report_frequency` seconds from then. Setting it at
    setup skips the first table, printed before anything has happened. There is no public API for this."""
    reporter._last_report_time = when


def save_state_at_a_cost_share(manager_class, share: float = 0.05) -> None:
    """Tune's "auto" experiment-state period (`TUNE_GLOBAL_CHECKPOINT_S=auto`) without its 10 s
    floor: after each save the next waits `1/share - 1` times as long as that save took
    (`manager_class._update_auto_checkpoint_time`, setting `_checkpoint_period` where
    `_auto_checkpoint_enabled`; `manager_class` is Ray's `_ExperimentCheckpointManager`).

    A small sweep's state (a few ms to save) is then saved at every step of Tune's loop, so a driver
    killed at any moment leaves a state that names each trial's latest checkpoint; a 1,000-trial
    sweep's (its save pickles every trial and the whole Optuna study) is saved less often instead of
    costing the driver more each step. Tune's own choices are a fixed period or auto's floor of 10 s,
    in which a trial can finish, or its named checkpoint be deleted, unrecorded."""
    def update(self, time_taken: float) -> None:
        if self._auto_checkpoint_enabled:
            self._checkpoint_period = time_taken * (1 / share - 1)
    manager_class._update_auto_checkpoint_time = update


def restore_target(argument):
    """The checkpoint Tune asks a trial to restore from: `Trainable.restore`'s argument is a Tune
    Checkpoint, a path, or (as Tune itself calls it) a private `_TrainingResult` whose `.checkpoint`
    it is. Returns None for a path (Tune's oldest form, which sweeper does not use)."""
    if hasattr(argument, "checkpoint") and hasattr(argument, "metrics"):
        return argument.checkpoint
    return None if isinstance(argument, str) else argument


def with_restore_target(argument, checkpoint):
    """`argument` (as `restore_target` reads it) asking for `checkpoint` instead."""
    if hasattr(argument, "checkpoint") and hasattr(argument, "metrics"):
        return type(argument)(checkpoint=checkpoint, metrics=argument.metrics)
    return checkpoint


# --- Ray Tune: population-based training ---------------------------------------------------------


@contextmanager
def pbt_accepts_a_searcher(pbt_module):
    """Within it, Ray's PBT (and PB2) takes a trial proposed by a searcher: its `on_trial_add` refuses
    any `SearchGenerator` (the name `pbt_module.SearchGenerator`, looked up in Ray's
    `ray.tune.schedulers.pbt` module at each call), because a searcher would learn from results of
    configs that PBT has since changed. sweeper's searcher only proposes the initial population (the
    warm starts, then TPE's random start-up draws) and learns nothing PBT relies on. There is no public
    switch."""
    refused = pbt_module.SearchGenerator
    pbt_module.SearchGenerator = _NeverASearcher
    try:
        yield
    finally:
        pbt_module.SearchGenerator = refused


class _NeverASearcher:
    pass


def after_each_exploit(scheduler_class, announce) -> None:
    """`announce(scheduler, trial, donor, config_before, donor_result)` after each exploit of a
    subclass of Ray's PBT (`_exploit(tune_controller, trial, trial_to_clone)`, where the trial takes
    the donor's checkpoint and a mutated config; `_trial_state[donor].last_result` is the donor's
    result at the checkpoint taken). Ray only logs an exploit; there is no public hook."""
    exploit = scheduler_class._exploit

    def _exploit(self, tune_controller, trial, trial_to_clone):
        before, donor_result = dict(trial.config), dict(self._trial_state[trial_to_clone].last_result or {})
        exploit(self, tune_controller, trial, trial_to_clone)
        announce(self, trial, trial_to_clone, before, donor_result)
    scheduler_class._exploit = _exploit


# --- Ray core: the nodes ------------------------------------------------------------------------


class Node(NamedTuple):
    address: str  # the node manager's IP address
    node_id: str  # hex, as NodeAffinitySchedulingStrategy takes it
    cpus: float   # the CPUs it has in all


def alive_nodes(nodes: list[dict]) -> list[Node]:
    """The alive nodes in `ray.nodes()`'s answer.

    `ray.nodes()` is a DeveloperAPI that returns untyped dicts. Their keys ("Alive", "NodeID",
    "NodeManagerAddress", "Resources") are read only here. The typed public API,
    `ray.util.state.list_nodes`, needs the dashboard, and sweeper starts Ray without it."""
    return [Node(n["NodeManagerAddress"], n["NodeID"], n["Resources"].get("CPU", 0)) for n in nodes if n["Alive"]]


# --- MLflow ---------------------------------------------------------------------------------------


def monitor_running(monitor) -> bool:
    """Whether MLflow's `SystemMetricsMonitor` still samples: its thread (`monitor._process`) is alive.

    One failed MLflow call ends the monitor's thread for good, and the monitor says nothing of it;
    sweeper.trial.system starts a new one then. Where the name is gone (another release), the
    monitor counts as running: it is then never restarted, never doubled."""
    thread = getattr(monitor, "_process", monitor)
    return thread is monitor or (thread is not None and thread.is_alive())


# --- Optuna -------------------------------------------------------------------------------------


def distribution_contains(distribution, value) -> bool:
    """Whether an Optuna distribution can produce `value`, given in its external form
    (`BaseDistribution._contains`).

    No public method answers this. Reimplementing it would miss what `_contains` checks: the step
    grid, the log domain, categories equal only after conversion. A category that is not among the
    choices makes `to_internal_repr` raise ValueError, which counts as "no"."""
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except ValueError:
        return False


def frozen_trial(study: optuna.Study, trial) -> optuna.trial.FrozenTrial:
    """What `study` holds now for a live `trial`: its state, value and intermediate values.

    Public API only: within a study, trial numbers are consecutive from 0 in creation order, and
    `get_trials` lists the trials in that order. The name search below is a safeguard for a storage
    that lists them in another order. Not a copy (as `_storage.get_trial`, which this replaces)."""
    trials = study.get_trials(deepcopy=False)
    number = trial.number
    if number < len(trials) and trials[number].number == number:
        return trials[number]
    return next(t for t in trials if t.number == number)


def live_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A live `optuna.trial.Trial` for a trial already in `study` (`frozen._trial_id`).

    `Study.add_trial` returns nothing, and the only way to get a live Trial for an existing trial is
    Trial's constructor. It takes the storage's trial id, and FrozenTrial keeps that id private."""
    return optuna.trial.Trial(study, frozen._trial_id)
