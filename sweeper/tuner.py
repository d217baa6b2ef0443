"""Build the Ray Tune Tuner for a Sweep: OptunaSearch (TPE), ASHA, resources, storage, retries."""
from pathlib import Path

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sweeper.spec import Sweep


def trial_resources(sweep: Sweep, gpus_available: float) -> dict:
    """A GPU fraction per trial where GPUs exist (several trials per GPU), CPUs otherwise."""
    resources = {"cpu": sweep.resources.cpus}
    if gpus_available > 0:
        resources["gpu"] = sweep.resources.gpu_fraction
    return resources


def build_tuner(sweep: Sweep, trainable, *, storage_path: Path, run_name: str, gpus_available: float) -> tune.Tuner:
    define_by_run = callable(sweep.space)
    searcher = OptunaSearch(
        # A define-by-run space is the searcher's own; Tune then cannot hand it metric and mode.
        space=sweep.space if define_by_run else None,
        metric=sweep.metric if define_by_run else None,
        mode=sweep.mode if define_by_run else None,
        points_to_evaluate=[sweep.warm_start_params(i) for i in range(len(sweep.warm_start))] or None,
        sampler=optuna.samplers.TPESampler(seed=sweep.searcher.seed,
                                           n_startup_trials=sweep.searcher.n_startup_trials))
    scheduler = ASHAScheduler(
        time_attr="eval_period", max_t=sweep.config.num_evals,
        grace_period=sweep.scheduler.grace_period, reduction_factor=sweep.scheduler.reduction_factor)
    return tune.Tuner(
        tune.with_resources(trainable, trial_resources(sweep, gpus_available)),
        param_space={} if define_by_run else dict(sweep.space),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, search_alg=searcher,
                                    scheduler=scheduler, num_samples=sweep.num_samples),
        run_config=tune.RunConfig(
            name=run_name, storage_path=str(storage_path.resolve()),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            # The best checkpoint (for the registry) and the latest (for retries) survive.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=sweep.metric,
                checkpoint_score_order=sweep.mode),
            verbose=1))
