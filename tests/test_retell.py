"""A trial that errored (told FAIL to Optuna) and that a resume runs again to its end reaches the
searcher: a new Optuna trial with its params, its intermediate values and its outcome, which TPE and
the parameter importances count. First the searcher alone (real Optuna, Tune's calls made by hand),
then a real Tune experiment that errors, is restored with resume_errored and finishes: without
sweeper's callback Tune drops the result before the searcher sees it; with it, the study has it."""
import json
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import ray
from optuna.trial import TrialState
from ray import tune

from sweeper.compat import optuna_study_of, optuna_trials_of, tune_config_of
from sweeper.driver import resume
from sweeper.search.searcher import SweepSearch

MAX_T = 4


def _searcher(max_t: int = MAX_T, told_space: bool = True) -> SweepSearch:
    """`told_space`: given the Tuner's metric, mode and param space as Tune gives them (a Tuner
    itself does that)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = SweepSearch(time_attr="eval_period", max_t=max_t, n_startup_trials=2,
                           sampler=optuna.samplers.TPESampler(seed=0))
    if told_space:
        assert searcher.set_search_properties("fid_best", "min", {"x": tune.uniform(0.0, 1.0)})
    return searcher


def _errored(searcher: SweepSearch, trial_id: str, values: list[float]) -> dict:
    params = searcher.suggest(trial_id)
    for period, value in enumerate(values, start=1):
        searcher.on_trial_result(trial_id, {"fid_best": value, "eval_period": period})
    searcher.on_trial_complete(trial_id, error=True)  # Tune: its failures used up
    return params


def test_an_errored_trial_that_finishes_after_a_resume_is_told_again():
    searcher = _searcher()
    params = _errored(searcher, "t1", [9.0, 7.0])
    study = optuna_study_of(searcher)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    # resume_errored ran it again from its checkpoint, to the end.
    searcher.on_trial_complete("t1", {"fid_best": 3.0, "eval_period": MAX_T})
    (told,) = study.get_trials(states=(TrialState.COMPLETE,))
    assert told.params == params and told.value == 3.0
    assert told.intermediate_values == {1: 9.0, 2: 7.0, MAX_T: 3.0}
    assert told.user_attrs["sweeper.retold_from"] == 0
    # The Tune trial's Optuna trial is the new one (what searcher_trials.json shows).
    assert optuna_trials_of(searcher)["t1"].number == told.number
    # Handed over twice (the callback and the searcher), or ending again: told once.
    assert not searcher.retell("t1", {"fid_best": 3.0, "eval_period": MAX_T})
    searcher.on_trial_complete("t1", {"fid_best": 3.0, "eval_period": MAX_T})
    assert len(study.trials) == 2


def test_a_retried_trial_stopped_early_is_pruned_and_one_that_fails_again_stays_failed():
    searcher = _searcher()
    stopped = _errored(searcher, "stopped", [8.0])
    searcher.on_trial_complete("stopped", {"fid_best": 6.0, "eval_period": 2})  # below max_t: a scheduler stopped it
    (pruned,) = optuna_study_of(searcher).get_trials(states=(TrialState.PRUNED,))
    assert pruned.params == stopped and pruned.intermediate_values == {1: 8.0, 2: 6.0}
    _errored(searcher, "again", [5.0])
    searcher.on_trial_complete("again", error=True)
    searcher.on_trial_complete("again", {"fid_best": 4.0, "eval_period": MAX_T, "diverged": True})
    assert [t.state for t in optuna_study_of(searcher).trials] == [TrialState.FAIL, TrialState.PRUNED, TrialState.FAIL]


def test_a_finished_trial_is_not_told_twice():
    """Only a FAIL is told again: a trial told COMPLETE that Tune reports again keeps Ray's warning."""
    searcher = _searcher()
    searcher.suggest("done")
    searcher.on_trial_complete("done", {"fid_best": 2.0, "eval_period": MAX_T})
    assert not searcher.retell("done", {"fid_best": 1.0, "eval_period": MAX_T})
    searcher.on_trial_complete("done", {"fid_best": 1.0, "eval_period": MAX_T})
    assert [(t.state, t.value) for t in optuna_study_of(searcher).trials] == [(TrialState.COMPLETE, 2.0)]


# A real Tune experiment: period 1, a checkpoint, then an error until the marker exists.
def flaky(config, marker):
    start = 0
    if checkpoint := tune.get_checkpoint():
        with checkpoint.as_directory() as d:
            start = json.loads(Path(d, "state.json").read_text())["period"]
    for period in range(start + 1, 3):
        if period == 2 and not Path(marker).exists():
            raise RuntimeError("the first run of this trial fails at period 2")
        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.json").write_text(json.dumps({"period": period}))
            tune.report({"fid_best": config["x"] + 1 / period, "eval_period": period},
                        checkpoint=tune.Checkpoint.from_directory(d))


@pytest.fixture(scope="module")
def ray_local():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    yield
    ray.shutdown()


def _errored_then_resumed(folder: Path, with_callback: bool) -> tuple[optuna.Study, dict]:
    marker = folder / "may-finish"
    trainable = tune.with_parameters(flaky, marker=str(marker))
    tuner = tune.Tuner(
        trainable, param_space={"x": tune.uniform(0.0, 1.0)},
        # max_concurrent_trials: Tune wraps the searcher in its ConcurrencyLimiter, as in a sweep.
        tune_config=tune.TuneConfig(metric="fid_best", mode="min", search_alg=_searcher(max_t=2, told_space=False),
                                    num_samples=1,
                                    max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(folder), name="flaky", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)))
    assert tuner.fit().num_errors == 1
    marker.touch()
    restored = tune.Tuner.restore(str(folder / "flaky"), trainable, resume_errored=True)
    searcher = tune_config_of(restored).search_alg  # what sweeper.driver.run takes too
    if with_callback:
        resume.retell_retried(restored, searcher)
    results = restored.fit()
    assert results.num_errors == 0 and results[0].metrics["eval_period"] == 2
    return optuna_study_of(searcher), results[0].metrics


def test_tune_drops_a_resumed_errored_trial_unless_the_callback_hands_it_over(ray_local, tmp_path):
    study, _ = _errored_then_resumed(tmp_path / "without", with_callback=False)
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # what issue 21 saw: TPE never hears of it
    study, metrics = _errored_then_resumed(tmp_path / "with", with_callback=True)
    (failed, told) = study.trials
    assert (failed.state, told.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert told.params == failed.params and told.value == pytest.approx(metrics["fid_best"])
    assert told.intermediate_values == pytest.approx({1: failed.intermediate_values[1], 2: metrics["fid_best"]})
