"""Promotion-based ASHA on a real Ray Tune run: trials pause at each rung, the best 1/eta of a rung
resume from their checkpoint and train on exactly where they stopped, only the best reach max_t, the
compute spent is the plan's, and the run ends (no deadlock) with no trial errored. A deterministic
trainable on 2 CPUs: trial x has loss x + 1/period, so lower x ranks better at every rung."""
import json
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
from ray import tune
from ray.tune.search import Searcher

from sweeper.search.plan import plan_budget
from sweeper.search.promotion import PromotionASHA, Rungs, RunningLimiter

DEADLINE_S = 150  # Tune's own time budget: a deadlocked run ends there and fails the test


def train(config):
    """Reports every period with a checkpoint; appends (period, the period it resumed from) to a log
    per trial, which a restart from scratch or a skipped period would show."""
    start = 0
    if checkpoint := tune.get_checkpoint():
        with checkpoint.as_directory() as d:
            start = json.loads(Path(d, "state.json").read_text())["period"]
    log = Path(config["log_dir"]) / f"{config['x']}.log"
    for period in range(start + 1, config["max_t"] + 1):
        with log.open("a") as f:
            f.write(f"{period} {start}\n")
        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.json").write_text(json.dumps({"period": period}))
            # `compute`: what the trial has spent, at its cost per period: costs[x % len(costs)], else 1.
            cost = config.get("costs", [1])[config["x"] % len(config.get("costs", [1]))]
            tune.report({"period": period, "loss": config["x"] + 1 / period, "compute": period * cost},
                        checkpoint=tune.Checkpoint.from_directory(d))


class InOrder(Searcher):
    """Proposes x = 0, 1, 2, ... in turn."""
    def __init__(self):
        super().__init__()
        self.next_x = 0

    def suggest(self, trial_id):
        self.next_x += 1
        return {"x": self.next_x - 1}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


@pytest.fixture(scope="module")
def ray_local():
    # The trial workers cannot import this test module: send its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    yield
    ray.shutdown()


def _fit(tmp_path, scheduler, num_samples, xs=None, space=(), **tune_config):
    """`xs`: a grid of these values of x (else the search algorithm proposes `num_samples`)."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    space = {"log_dir": str(log_dir), "max_t": scheduler.state()["rungs"][-1], **dict(space)}
    # reuse_actors: a resumed trial restores its checkpoint in another trial's process, 5x faster
    # here than a process per start (the sweep's setting, where the same assertions hold too).
    tuner = tune.Tuner(
        tune.with_resources(train, {"cpu": 1}), param_space={**space, **({"x": tune.grid_search(xs)} if xs else {})},
        tune_config=tune.TuneConfig(metric="loss", mode="min", scheduler=scheduler, num_samples=num_samples,
                                    time_budget_s=DEADLINE_S, reuse_actors=True, **tune_config),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="promotion", verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    started = time.monotonic()
    results = tuner.fit()
    elapsed = time.monotonic() - started
    assert elapsed < DEADLINE_S - 10, f"the run took {elapsed:.0f} s: stopped by the time budget (a deadlock?)"
    assert results.num_errors == 0, [r.error for r in results if r.error]
    logs = {int(p.stem): [tuple(map(int, line.split())) for line in p.read_text().splitlines()]
            for p in log_dir.glob("*.log")}
    assert len(logs) == len(results)
    return results, logs


def _assert_exact_continuation(logs, rungs):
    for x, lines in logs.items():
        periods = [period for period, _ in lines]
        assert periods == list(range(1, periods[-1] + 1)), (x, lines)  # no restart, no gap
        # Each resumption starts where the trial paused: at one of its rungs.
        assert {start for _, start in lines} <= {0, *rungs}, (x, lines)


def test_the_best_third_of_each_rung_go_on_from_their_checkpoints(ray_local, tmp_path):
    # 36 periods at 1 a period, first rung 1, two brackets at most (sweeper.search.plan): rungs 1, 3, 9;
    # bracket 0 starts 9 trials at period 1 (9 + 3*2 + 1*6 = 21 periods), bracket 1 starts 3 at
    # period 3 (3*3 + 1*6 = 15): 36 in all.
    plan = plan_budget(36, 1.0, first_rung=1, max_brackets=2)
    assert (plan.rungs, plan.configs, plan.cost) == ((1, 3, 9), (9, 3), 36)
    scheduler = PromotionASHA.from_plan(plan, time_attr="period")
    # Trials join the bracket with the least (joined + 1/2) / size (9 : 3), worked by hand: x = 2, 6,
    # 10 bracket 1, the others bracket 0. A budget that stops admitting after 4 trials has started both.
    in_1 = [2, 6, 10]
    in_0 = [x for x in range(12) if x not in in_1]
    results, logs = _fit(tmp_path, scheduler, plan.num_samples, search_alg=RunningLimiter(InOrder(), max_concurrent=2))
    _assert_exact_continuation(logs, plan.rungs)
    last = {x: lines[-1][0] for x, lines in logs.items()}
    assert set(last.values()) <= set(plan.rungs)  # a trial that never went on ended where it paused
    # Loss x + 1/period ranks the trials by x at every rung: the best 1/3 of each rung went on.
    bracket_0 = [sorted(x for x in in_0 if last[x] >= r) for r in plan.rungs]
    bracket_1 = [sorted(x for x in in_1 if last[x] >= r) for r in plan.rungs[1:]]
    assert bracket_0 == [in_0, [0, 1, 3], [0]] and bracket_1 == [in_1, [2]]
    assert all(logs[x][0] == (1, 0) and (2, 1) not in logs[x] for x in in_1)  # no pause at period 1
    assert any(start > 0 for lines in logs.values() for _, start in lines), "no trial resumed from a checkpoint"
    assert sum(last.values()) == plan.cost  # the periods trained: exactly the plan's
    assert sorted(r.metrics["training_iteration"] for r in results) == sorted(last.values())
    _assert_state_round_trips(scheduler, plan)


def _assert_state_round_trips(scheduler, plan):
    state = scheduler.state()
    assert json.loads(json.dumps(state)) == state and state["forced"] == 0
    assert [len(r) for r in state["records"][0]] == [9, 3, 1] and [len(r) for r in state["records"][1]] == [0, 3, 1]
    # Tune hands a restored scheduler metric and mode itself (set_search_properties): not part of restore.
    again = PromotionASHA.from_plan(plan, time_attr="period", metric="loss", mode="min")
    again.restore(state)
    assert again.state() == state
    with pytest.raises(ValueError):
        PromotionASHA(rungs=(1, 3), time_attr="period").restore(state)


def test_with_tunes_own_concurrency_limit_the_run_still_ends(ray_local, tmp_path):
    # Tune's BasicVariantGenerator counts paused trials as running: with 2 at once it holds the third
    # configuration back while trials 0 and 1 are paused at rung 1, and then the last one while 1 and
    # 2 are. Each time the scheduler resumes the best paused trial rather than wait forever.
    scheduler = PromotionASHA(rungs=(1, 3), eta=3, time_attr="period")
    results, logs = _fit(tmp_path, scheduler, 1, xs=[0, 1, 2], max_concurrent_trials=2)
    _assert_exact_continuation(logs, (1, 3))
    assert scheduler.state()["forced"] > 0
    assert logs[0][-1][0] == 3 and logs[2][-1][0] == 1


def test_rungs_in_compute_compare_trials_at_equal_compute_not_equal_periods(ray_local, tmp_path):
    # Rungs 2, 6, 18 periods of a config costing 1 a period: rung 2 at compute 1.5, rung 6 at 5.5
    # (half a period early: the report nearest the horizon). Trial x costs 2, 1 or 0.5 a period
    # (x % 3 = 0, 1, 2), so it reaches the first rung at period 1, 2 or 3: compute 2, 2, 1.5.
    rungs = Rungs.in_compute((2, 6, 18), 1.0, "compute")
    assert rungs.compute == (1.5, 5.5)
    scheduler = PromotionASHA(rungs=rungs, eta=3, time_attr="period")
    results, logs = _fit(tmp_path, scheduler, 6, space={"costs": [2.0, 1.0, 0.5]},
                         search_alg=RunningLimiter(InOrder(), max_concurrent=2))
    first_pause = {x: max(period for period, start in lines if start == 0) for x, lines in logs.items()}
    assert first_pause == {x: [1, 2, 3][x % 3] for x in range(6)}
    # The best (x 0, at 2 a period) pauses next where its compute reaches rung 6's, period 3 (compute
    # 6), and trains its whole run: the last rung is max_t periods, not compute.
    assert [start for _, start in logs[0]] == [0, 1, 1, *[3] * 15]
    assert max(lines[-1][0] for lines in logs.values()) == 18
    state = scheduler.state()
    assert len(state["records"][0][0]) == 6 and state["forced"] == 0
    assert "in compute" in scheduler.debug_string()


def test_a_rung_reached_is_the_highest_whose_horizon_the_result_has_reached():
    periods = Rungs((2, 6, 18))
    assert [periods.reached({"t": t}, "t") for t in (1, 2, 5, 6, 17, 18)] == [None, 0, 0, 1, 1, 2]
    compute = Rungs.in_compute((2, 6, 18), 10.0, "spent")
    assert compute.reached({"t": 1, "spent": 14.9}, "t") is None and compute.reached({"t": 1, "spent": 15}, "t") == 0
    assert compute.reached({"t": 17, "spent": 54.9}, "t") == 0 and compute.reached({"t": 3, "spent": 60}, "t") == 1
    assert compute.reached({"t": 18, "spent": 20}, "t") == 2  # max_t periods ends a cheap trial's run
    assert compute.reached({"spent": 99}, "t") is None
