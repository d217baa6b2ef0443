"""Build the Ray Tune Tuner for a Sweep: Optuna's TPE, the scheduler (promotion-based successive
halving, Ray's ASHA or FIFO), the budget's stop, resources, concurrency, storage, retries.

Every decision ranks trials by the sweep's objective (`Sweep.objective`, `fid_best`): Tune's
metric, so the scheduler's rungs and the searcher see it. Checkpoints are kept by the per-eval
metric (`fid`), so the checkpoint the objective's value came from is one Tune keeps."""
import math
import warnings
from pathlib import Path

import optuna
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from sweeper.definition import ASHA, POPULATION, Promotion, Sweep
from sweeper.definition.space import always_searched_keys
from sweeper.search import console
from sweeper.search.ending import EndTrialRuns
from sweeper.search.footprint import RAY_UNITS
from sweeper.search.plan import Plan, fixed_plan
from sweeper.search.population import build_population
from sweeper.search.promotion import PromotionASHA, RunningLimiter
from sweeper.search.scheduler import WarmStartASHA
from sweeper.search.searcher import SweepSearch
from sweeper.search.spending import BudgetStop, SaveSearchState, Spending, register_spending
from sweeper.tracking.runs import Tracking

TIME_ATTR = "eval_period"


def max_concurrent(sweep: Sweep, available: dict, per_trial: dict | None = None) -> int:
    """Trials at once: how many `per_trial` resources ({"cpu": n, "gpu": fraction}; None: the
    sweep's `Resources.per_trial`) `available` ({"CPU": n, "GPU": n}, Ray's names) fits, capped so that at
    least half of the trials are TPE proposals informed by `n_startup` finished trials.

    Trial i is proposed while at most c - 1 others run, so at least i - c + 1 have finished; trials
    from n_startup + c - 1 on are informed TPE proposals, and there are at least N/2 of them when
    c <= N//2 - n_startup + 1. Where n_startup > N/2 no concurrency gives TPE half the trials, and
    none is capped. An explicit `Sweep.max_concurrent` wins.
    """
    if sweep.max_concurrent is not None:
        return sweep.max_concurrent
    per_trial = per_trial or sweep.resources.per_trial(available.get("GPU", 0))
    fits = max(1, min(_how_many(available.get(kind.upper(), 0), amount) for kind, amount in per_trial.items()))
    if isinstance(sweep.scheduler, POPULATION):
        return fits  # the whole population is proposed at once; PBT time-shares it over what fits
    n, n_startup = sweep.num_samples, sweep.searcher.startup_trials(sweep.num_samples)
    if n_startup > n // 2:
        return fits
    return min(fits, n // 2 - n_startup + 1)


def _how_many(available: float, amount: float) -> int:
    """How many `amount`s Ray fits into `available`: counted in Ray's fixed-point unit (1e-4,
    rounded), as Ray does; in floats 1 // 0.2 is 4."""
    return round(available * RAY_UNITS) // max(1, round(amount * RAY_UNITS))


def shown_metrics(sweep: Sweep, reported: tuple[str, ...]) -> tuple[str, ...]:
    """The sweep's metric first, then the others its kind of trial reports that a person compares."""
    return (sweep.metric, *(m for m in reported if m != sweep.metric))


def trial_dirname(trial) -> str:
    """A trial's folder is its id, so the driver can tell which trials Tune knows (sweeper.driver.resume)."""
    return trial.trial_id


def build_searcher(sweep: Sweep, configs: int | None = None) -> SweepSearch:
    """Optuna's TPE with the warm starts enqueued first, then as many of their neighbours as a third
    of `configs` leaves (Sweep.enqueued_neighbours; None: num_samples; a budget's plan passes its count)."""
    define_by_run = callable(sweep.space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study created
    n_startup = sweep.searcher.startup_trials(sweep.num_samples)
    neighbours = sweep.enqueued_neighbours(configs)
    # constant_liar: trials in flight count as bad results, so parallel proposals spread out;
    # multivariate + group model the parameters jointly, per branch of a conditional space.
    with warnings.catch_warnings():
        # `group` is "experimental" since Optuna 2.8; the warning would print on every sweep.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=sweep.searcher.seed, n_startup_trials=n_startup,
                                             constant_liar=True, multivariate=True, group=define_by_run)
    return SweepSearch(
        time_attr=TIME_ATTR, max_t=sweep.config.horizon(), n_startup_trials=n_startup,
        # A define-by-run space is the searcher's own; Tune then cannot hand it metric and mode.
        space=sweep.space if define_by_run else None,
        metric=sweep.objective if define_by_run else None,
        mode=sweep.mode if define_by_run else None,
        points_to_evaluate=[*sweep.warm_points, *(n.params for n in neighbours)] or None,
        # A whole-config warm start's other values (sweeper.definition.warm) go in its trial's config,
        # and in its neighbours'.
        warm_overrides=sweep.warm_overrides,
        neighbour_overrides=[n.overrides for n in neighbours],
        sampler=sampler)


def build_scheduler(sweep: Sweep, plan: Plan | None = None, searcher: SweepSearch | None = None):
    """Promotion: PromotionASHA on `plan` (a budget's), or without one on the sweep's num_evals and
    num_samples (`fixed_plan`); PBT/PB2: Ray's (sweeper.search.population); ASHA: Ray's, the trials `searcher` proposed as warm starts never
    stopped (none without a searcher); None: FIFO."""
    if isinstance(sweep.scheduler, Promotion):
        promotion = sweep.scheduler
        plan = plan or fixed_plan(sweep.config.num_evals, sweep.num_samples, eta=promotion.reduction_factor,
                                  first_rung=promotion.first_rung)
        return PromotionASHA.from_plan(plan, in_compute=promotion.rungs_in == "compute", time_attr=TIME_ATTR)
    if isinstance(sweep.scheduler, POPULATION):
        return build_population(sweep, TIME_ATTR)
    if isinstance(sweep.scheduler, ASHA):
        return WarmStartASHA(searcher=searcher, time_attr=TIME_ATTR, max_t=sweep.config.horizon(),
                             grace_period=sweep.scheduler.grace_period,
                             reduction_factor=sweep.scheduler.reduction_factor)
    return FIFOScheduler()


def _register_spending(sweep: Sweep, plan: Plan | None, path: str) -> None:
    if plan is None or math.isnan(plan.cost):
        register_spending(path, Spending(sweep.budget))
        return
    register_spending(path, Spending(sweep.budget, periods_per_config=plan.cost / plan.cost_per_period / plan.num_samples,
                            cost_per_period=plan.cost_per_period))


def build_tuner(sweep: Sweep, trainable, *, storage_path: str | Path, run_name: str, available: dict,
                per_trial: dict | None = None, reported: tuple[str, ...] = (),
                searcher: SweepSearch | None = None, plan: Plan | None = None,
                search_state_path: str | None = None, verbose: bool = False,
                tracking: Tracking | None = None) -> tune.Tuner:
    """`per_trial`: one trial's resources (None: the sweep's `Resources.per_trial`); `reported`:
    the metrics besides the sweep's that its kind of trial reports and the console shows; `plan`:
    a budget's (sweeper.search.plan); `search_state_path`: the experiment's path, where the
    scheduler's and the budget's state are saved for a resume (None: not saved); `verbose`: a line
    per eval period and Tune's table every few minutes, besides the line per ended trial (which
    alone keeps a 1,000-trial console readable) and the table at the end; `tracking`: the sweep's
    MLflow runs, each trial's ended as the trial ends (None: left to the caller)."""
    per_trial = per_trial or sweep.resources.per_trial(available.get("GPU", 0))
    searcher = searcher or build_searcher(sweep, configs=plan.num_samples if plan else None)
    scheduler = build_scheduler(sweep, plan, searcher)
    stop, budget_path = None, None
    if sweep.budget is not None:
        key = search_state_path or f"{storage_path}/{run_name}"
        _register_spending(sweep, plan, key)
        searcher.budget_path, stop, budget_path = key, BudgetStop(key), key
    concurrency = max_concurrent(sweep, available, per_trial)
    population = isinstance(sweep.scheduler, POPULATION)
    searcher.per_period = not population
    if isinstance(scheduler, PromotionASHA):
        # TPE models the highest rung with enough results (sweeper.search.rung_model).
        searcher.rungs, searcher.model_seed = scheduler.state()["rungs"], sweep.searcher.seed
        searcher.rung_clock = scheduler.rungs
        # Tune's own limit counts paused trials as running; a paused trial frees its place here.
        searcher, concurrency = RunningLimiter(searcher, concurrency), None
    saver = [SaveSearchState(search_state_path, scheduler if isinstance(scheduler, PromotionASHA) else None)] \
        if search_state_path else []
    shown = shown_metrics(sweep, reported)
    return tune.Tuner(
        tune.with_resources(trainable, per_trial),
        param_space={} if callable(sweep.space) else dict(sweep.space),
        tune_config=tune.TuneConfig(metric=sweep.objective, mode=sweep.mode,
                                    search_alg=searcher, scheduler=scheduler,
                                    num_samples=sweep.num_samples,
                                    max_concurrent_trials=concurrency,
                                    # A trial's process runs the next trial of the same resources
                                    # (pauses and resumptions too): imports and the MLflow store's
                                    # engine are paid once per process, not per trial.
                                    # Packing still holds: a trial frees its GPU memory when it ends
                                    # and sets its own share's cap and threads when it starts
                                    # (sweeper.trial.trainable); a process Tune does not reuse ends.
                                    reuse_actors=True,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            # A URI (s3://, gs://) as given; a local path made absolute (Tune requires it).
            name=run_name, storage_path=storage_path if "://" in str(storage_path) else str(Path(storage_path).resolve()),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            # The best checkpoint (for the final evaluation) and the latest (for retries) survive.
            # A population keeps them all until the sweep ends (sweeper.search.population): a clone
            # restores from its donor's a moment after Tune would delete it.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None if population else 2, checkpoint_score_attribute=sweep.metric,
                checkpoint_score_order=sweep.mode),
            # Tune's table looks every column up in every trial's config: only the keys all trials have.
            progress_reporter=console.status_table(shown, sorted(always_searched_keys(sweep.space)), sweep.num_samples,
                                                   every_few_minutes=verbose),
            callbacks=[*([console.EvalLines(shown, sweep.config.num_evals)] if verbose else []),
                       console.TrialLines(sweep.objective, sweep.mode, sweep.config.num_evals, budget_path), *saver,
                       *([EndTrialRuns(tracking)] if tracking is not None else [])],
            stop=stop,
            verbose=1))
