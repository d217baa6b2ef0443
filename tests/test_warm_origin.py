"""A trial is a warm start because the searcher proposed it as one (`SweepSearch.proposed_by`),
never because its params equal a warm start's. In a categorical-only space TPE's and the startup
trials' proposals repeat the warm start's values: those trials are stopped by ASHA like any other,
are grouped "searched", and never set the hand-tuned baseline (real Optuna, real Ray Tune)."""
import math
import sys
import time

import pytest
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sweeper import ASHA, TPE, Sweep
from sweeper.kinds import complete, kind_of
from sweeper.search.searcher import STARTUP, WARM_START
from sweeper.search.searcher import TPE as PROPOSED_BY_TPE
from sweeper.search.tuner import TIME_ATTR, build_scheduler, build_searcher, build_tuner
from sweeper.tracking.outcomes import STOPPED, baseline_trial, trial_table
from trainables.config import GANConfig

NUM_EVALS = 4
WARM = {"d_norm": "none"}


def _sweep() -> Sweep:
    # Two values only: most proposals repeat the warm start's.
    return complete(Sweep(name="origin", config=GANConfig(num_evals=NUM_EVALS),
                          space={"d_norm": tune.choice(["none", "instance"])}, warm_start=[WARM],
                          num_samples=6, max_concurrent=1, searcher=TPE(n_startup_trials=2),
                          scheduler=ASHA(grace_period=1, reduction_factor=2))).validate()


def _asked(sweep: Sweep, n: int):
    searcher = build_searcher(sweep)
    searcher.set_search_properties(sweep.objective, sweep.mode, dict(sweep.space))
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(n)}
    repeats = [t for t, config in configs.items() if config == WARM and searcher.proposed_by[t] != WARM_START]
    assert repeats, f"no proposal repeated the warm start: {configs}"
    return searcher, configs, repeats


def test_a_proposal_repeating_a_warm_start_is_stopped_and_the_warm_start_is_not():
    sweep = _sweep()
    searcher, configs, repeats = _asked(sweep, 6)
    assert searcher.proposed_by["t0"] == WARM_START and searcher.warm_starts() == {"t0": 0}
    assert {searcher.proposed_by[t] for t in repeats} <= {STARTUP, PROPOSED_BY_TPE}
    better = next(t for t in configs if t not in ("t0", repeats[0]))
    ours = build_scheduler(sweep, searcher=searcher)
    # The reference: Ray's own ASHA on the same rungs, which stops both.
    ray_asha = ASHAScheduler(time_attr=TIME_ATTR, max_t=NUM_EVALS, grace_period=1, reduction_factor=2)
    decisions = {}
    for name, scheduler in (("ours", ours), ("ray", ray_asha)):
        scheduler.set_search_properties(sweep.objective, sweep.mode)
        trials = {t: Trial("fn", config=configs[t], trial_id=t, stub=True) for t in (better, "t0", repeats[0])}
        for trial in trials.values():
            scheduler.on_trial_add(None, trial)
        # At the first rung: a better trial first, then the warm start and its repeat, both worse.
        decisions[name] = [scheduler.on_trial_result(None, trials[t], {TIME_ATTR: 1, sweep.objective: fid})
                           for t, fid in ((better, 1.0), ("t0", 5.0), (repeats[0], 6.0))]
    assert decisions["ray"] == [TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.STOP]
    assert decisions["ours"] == [TrialScheduler.CONTINUE, TrialScheduler.CONTINUE, TrialScheduler.STOP]


def test_the_scheduler_reads_the_record_a_resume_restores(tmp_path):
    # A resume restores the searcher's state into the object the scheduler holds (OptunaSearch
    # replaces its __dict__): the scheduler reads the restored record, not a stale copy.
    sweep = _sweep()
    searcher, _, repeats = _asked(sweep, 6)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = build_searcher(sweep)
    scheduler = build_scheduler(sweep, searcher=restored)
    assert not scheduler.is_warm_start("t0")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert scheduler.is_warm_start("t0") and not any(scheduler.is_warm_start(t) for t in repeats)
    assert restored.warm_starts() == {"t0": 0}


def worse_by_trial(config):
    # Each trial worse than the ones before it, whatever its params (one trial at a time): its FID
    # is the second it started at.
    fid = time.time()
    for period in range(1, NUM_EVALS + 1):
        tune.report({"fid": fid, "fid_best": fid, "eval_period": period, "diverged": 0.0})


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    sweep = _sweep()
    searcher = build_searcher(sweep)
    tuner = build_tuner(sweep, worse_by_trial, storage_path=tmp_path_factory.mktemp("tune"), run_name="origin",
                        available={"CPU": 2}, searcher=searcher)
    results = tuner.fit()
    yield sweep, searcher, results
    ray.shutdown()


def test_in_a_sweep_a_repeat_of_the_warm_start_is_searched_and_sets_no_baseline(swept):
    sweep, searcher, results = swept
    table = trial_table(results, {}, sweep, searcher.proposed_by, searcher.warm_starts(), kind_of(sweep.config).group)
    warm = table[table["proposed_by"] == WARM_START]
    repeats = table[(table["config.d_norm"] == WARM["d_norm"]) & (table["proposed_by"] != WARM_START)]
    assert len(warm) == 1 and len(repeats) >= 1, table[["trial_id", "proposed_by", "config.d_norm"]]
    # The warm start is the first trial, the best: it runs to the end. Every later trial, a repeat
    # of the warm start's params included, is worse than those before it: stopped at the first rung.
    assert warm.iloc[0]["eval_periods"] == NUM_EVALS
    assert (repeats["outcome"] == STOPPED).all() and (repeats["eval_periods"] == 1).all()
    assert warm.iloc[0]["warm_start"] and warm.iloc[0]["group"] == "warm-start" and warm.iloc[0]["warm_start_index"] == 0
    assert not repeats["warm_start"].any() and (repeats["group"] == "searched").all()
    assert all(i is None or math.isnan(i) for i in repeats["warm_start_index"])

    # The final evaluation measured the repeat best of all: it is the search's gain, not the baseline.
    table["fid_final"] = 2.0
    table.loc[warm.index, "fid_final"] = 3.0
    table.loc[repeats.index[0], "fid_final"] = 0.5
    metrics, lines = kind_of(sweep.config).summarise(sweep, table)
    assert metrics["baseline_fid_final"] == 3.0 and metrics["fid_final_gain_over_baseline"] == 2.5
    trial, text = baseline_trial(sweep, table, "fid_final", "min")
    assert trial == warm.iloc[0]["trial_id"] and text.startswith("warm_start[0] {'d_norm': 'none'}")
