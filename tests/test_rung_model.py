"""TPE that learns from every rung (BOHB's rule): proposals come from a model of the highest rung
with enough results, a third stay random, and trials are told at their eval period (real Optuna)."""
from ray import tune

from sweeper import TPE, Promotion, Sweep
from sweeper.compat import optuna_study_of
from sweeper.kinds import complete
from sweeper.search.promotion import Rungs
from sweeper.search.tuner import build_searcher
from trainables.config import GANConfig

SPACE = {"g_lr": tune.uniform(0.001, 0.999)}


def _searcher(rungs=(2, 6)):
    sweep = complete(Sweep("rungs", GANConfig(num_evals=6), space=SPACE, num_samples=40,
                           searcher=TPE(seed=3, n_startup_trials=4), scheduler=Promotion())).validate()
    searcher = build_searcher(sweep)
    searcher.set_search_properties("fid_best", "min", SPACE)
    searcher.rungs, searcher.model_seed = rungs, 3
    return searcher


def _run_to(searcher, trial_id: str, periods: int, value_of) -> float:
    x = searcher.suggest(trial_id)["g_lr"]
    for period in range(1, periods + 1):
        # training_iteration deliberately unlike the eval period (a resumed or retried trial)
        searcher.on_trial_result(trial_id, {"fid_best": value_of(x, period), "eval_period": period,
                                            "training_iteration": 100 + period})
    return x


def test_proposals_follow_the_highest_rung_with_enough_points():
    # At rung 2 the best g_lr is 0.2; at rung 6 (later in training) it is 0.8: an early rung misleads.
    def value_of(x, period):
        return (x - 0.2) ** 2 if period <= 2 else (x - 0.8) ** 2

    searcher = _searcher()
    for i in range(10):  # ten trials paused at rung 2 (still RUNNING for Optuna)
        _run_to(searcher, f"a{i}", 2, value_of)
    for i in range(4):  # four stopped there: PRUNED, so TPE's own rule may propose
        searcher.on_trial_complete(f"a{i}", None)
    proposals = [(_run_to(searcher, f"b{i}", 0, value_of), searcher.modelled_on[f"b{i}"]) for i in range(12)]
    modelled = [x for x, rung in proposals if rung == 2]
    assert len(modelled) >= 6 and any(rung is None for _, rung in proposals)  # about a third random
    assert sum(abs(x - 0.2) for x in modelled) / len(modelled) < 0.15  # uniform draws average 0.34 from 0.2

    # Now enough trials reach rung 6: the model moves up to it and to its optimum.
    for i in range(10):
        _run_to(searcher, f"c{i}", 6, value_of)
    later = [(_run_to(searcher, f"d{i}", 0, value_of), searcher.modelled_on[f"d{i}"]) for i in range(12)]
    at_six = [x for x, rung in later if rung == 6]
    assert len(at_six) >= 6 and not any(rung == 2 for _, rung in later)
    assert sum(abs(x - 0.8) for x in at_six) / len(at_six) < 0.15


def test_the_searcher_is_told_each_result_at_its_eval_period():
    searcher = _searcher()
    _run_to(searcher, "t", 3, lambda x, period: 10.0 - period)
    trial = optuna_study_of(searcher).get_trials(deepcopy=False)[0]
    assert trial.intermediate_values == {1: 9.0, 2: 8.0, 3: 7.0}


def test_without_rungs_the_searcher_is_optunas_own_tpe():
    searcher = _searcher(rungs=())
    for i in range(8):
        _run_to(searcher, f"a{i}", 2, lambda x, period: x)
        searcher.on_trial_complete(f"a{i}", None)
    searcher.suggest("b")
    assert not getattr(searcher, "modelled_on", {})


def test_with_rungs_in_compute_a_result_is_told_once_at_the_rung_its_compute_reached():
    # Rungs 2, 6 periods of a config costing 10 a period: rung 2 at compute 15, rung 6 is max_t
    # periods. This trial costs 20 a period: it reaches rung 2 at period 1, told there at step 2
    # (where the rung model reads rung 2), and nothing more until max_t.
    searcher = _searcher()
    searcher.rung_clock = Rungs.in_compute((2, 6), 10.0, "compute_s")
    searcher.suggest("t")
    for period in range(1, 7):
        searcher.on_trial_result("t", {"fid_best": 10.0 - period, "eval_period": period, "compute_s": 20.0 * period})
    trial = optuna_study_of(searcher).get_trials(deepcopy=False)[0]
    assert trial.intermediate_values == {2: 9.0, 6: 4.0}
