"""A budget's text and the plan derived from it: the rungs, brackets and configurations match plans
computed by hand (sweeper.search.plan's docstring gives the rule), and the rungs in compute where
trials differ in cost per period. No Ray started."""
import dataclasses
import json
import math
import re

import pytest
from ray import tune

from sweeper import Promotion, Sweep
from sweeper.definition.budget import Budget, parse_budget
from sweeper.definition.options import SweepError
from sweeper.kinds import complete
from sweeper.search.cost import PeriodCost
from sweeper.search.plan import Plan, bracket_periods, describe, fixed_plan, plan_budget
from sweeper.search.tuner import build_scheduler
from trainables.config import GANConfig


@pytest.mark.parametrize("text, amount, unit", [
    ("2gpu-h", 7200, "gpu-s"), ("0.5gpu-h", 1800, "gpu-s"), ("600cpu-s", 600, "cpu-s"),
    ("10cpu-min", 600, "cpu-s"), ("5000kimg", 5000, "kimg"), (" 90 GPU-min ", 5400, "gpu-s"),
    ("1.5cpu-h", 5400, "cpu-s"), (".5kimg", 0.5, "kimg"), ("30gpu-s", 30, "gpu-s")])
def test_accepted_budgets(text, amount, unit):
    assert parse_budget(text) == Budget(amount, unit)


@pytest.mark.parametrize("text", ["", "0gpu-h", "0.0kimg", "-2gpu-h", "2", "gpu-h", "2gpu", "2gpu-hours",
                                  "2tpu-h", "2 kimgs", "infgpu-h", "nangpu-s", "1e3kimg", "2gpu-h3"])
def test_refused_budgets_say_the_value_and_the_accepted_forms(text):
    with pytest.raises(SweepError) as refused:
        parse_budget(text)
    message = str(refused.value)
    assert "\n" not in message and repr(text) in message and "2gpu-h" in message and "kimg" in message


def test_a_budget_is_checked_pure_data():
    assert str(Budget(7200, "gpu-s")) == "7200gpu-s"
    for amount, unit in [(0, "gpu-s"), (-1, "kimg"), (float("inf"), "cpu-s"), (5, "gpu-h"), (True, "kimg")]:
        with pytest.raises(SweepError):
            Budget(amount, unit)


def test_bracket_cost_is_the_closed_form():
    # P(k, s) = r_k * (1 + (k - s) * (eta - 1) / eta): for rungs 2, 6, 18 and eta 3, 42, 30 and 18.
    assert [bracket_periods((2, 6, 18), s, 3) for s in range(3)] == [42, 30, 18]
    assert bracket_periods((2, 6, 18, 54), 0, 3) == 162 == 54 * 3


def test_budget_of_54_periods_one_bracket_to_18():
    # eta 3, first rung 2: rungs 2, 6, 18. Bracket 0 of width 1: 9 configurations x 2 periods = 18,
    # 3 go on 4 periods (to 6) = 12, 1 goes on 12 (to 18) = 12: 42 <= 54. Rung 54 would cost
    # 27*2 + 9*4 + 3*12 + 1*36 = 162 > 54. A second bracket (3 configurations x 6 + 1 x 12 = 30)
    # makes 72 > 54. Width floor(54 / 42) = 1.
    plan = plan_budget(54, 1.0)
    assert plan == Plan(eta=3, rungs=(2, 6, 18), configs=(9,), cost=42, cost_per_period=1.0)
    assert (plan.brackets, plan.max_t, plan.num_samples, plan.reaching(0)) == (1, 18, 9, [9, 3, 1])


def test_half_a_gpu_hour_at_20_gpu_s_a_period_three_brackets():
    # 1800 gpu-s / 20 per period = 90 periods: still k = 2 (162 > 90); brackets 42 + 30 + 18 = 90 fit
    # exactly: (9, 3, 1) configurations starting at periods 2, 6, 18; cost 90 x 20 = 1800 gpu-s.
    plan = plan_budget(parse_budget("0.5gpu-h").amount, 20.0)
    assert (plan.rungs, plan.configs, plan.cost) == ((2, 6, 18), (9, 3, 1), 1800)
    assert [plan.reaching(s) for s in range(3)] == [[9, 3, 1], [3, 1], [1]]


def test_a_horizon_cap_widens_the_brackets_instead():
    # 200 periods would pay for rung 54 (162), but a trial trains at most 20 periods: k = 2, three
    # brackets cost 90, width floor(200 / 90) = 2: (18, 6, 2) configurations, cost 180.
    plan = plan_budget(200, 1.0, max_horizon=20)
    assert (plan.rungs, plan.configs, plan.cost) == ((2, 6, 18), (18, 6, 2), 180)
    assert plan.reaching(0) == [18, 6, 2]
    assert plan_budget(200, 1.0).rungs == (2, 6, 18, 54) and plan_budget(200, 1.0).configs == (27,)


def test_eta_2_from_one_period():
    # Rungs 1, 2, 4, 8: 8 x 1 + 4 x 1 + 2 x 2 + 1 x 4 = 20 = the budget; rung 16 would cost
    # 16*1 + 8*1 + 4*2 + 2*4 + 1*8 = 48. A second bracket (4 x 2 + 2 x 2 + 1 x 4 = 16) does not fit.
    plan = plan_budget(10, 0.5, eta=2, first_rung=1)
    assert (plan.rungs, plan.configs, plan.cost) == ((1, 2, 4, 8), (8,), 10)


def test_a_small_budget_has_no_promotion_and_too_small_a_budget_is_refused():
    # 8 periods: rung 6 would cost 3*2 + 1*4 = 10 > 8; one rung (max_t 2) with floor(8/2) = 4 configurations.
    plan = plan_budget(8, 1.0)
    assert (plan.rungs, plan.configs, plan.cost) == ((2,), (4,), 8)
    with pytest.raises(SweepError, match="fewer than 3 configurations x 2 periods"):
        plan_budget(5, 1.0)  # 3 configurations of 2 periods need 6
    with pytest.raises(SweepError):
        plan_budget(100, 1.0, max_horizon=1)
    with pytest.raises(ValueError):
        plan_budget(100, 0.0)


def test_describe_names_the_rungs_and_brackets():
    lines = describe(plan_budget(1800, 20.0), unit="gpu-s")
    assert lines[0] == "budget plan: eta 3, rungs 2, 6, 18 eval periods (max_t 18), 13 configurations in 3 brackets"
    assert lines[1:] == ["  bracket 0: 9 at 2 -> 3 at 6 -> 1 at 18", "  bracket 1: 3 at 6 -> 1 at 18",
                         "  bracket 2: 1 at 18", "  expected cost 1800 gpu-s (20 gpu-s per eval period)"]
    json.dumps(lines)


def test_rungs_are_in_compute_where_the_space_searches_what_a_period_costs():
    def sweep(space, **kwargs):
        return complete(Sweep("c", GANConfig(num_evals=20), space=space, **kwargs)).validate()

    costly = sweep({"n_critic": tune.choice([1, 5]), "g_lr": tune.uniform(1e-4, 1e-3)}, budget="600cpu-s")
    assert costly.scheduler.rungs_in == "compute"
    assert sweep({"g_lr": tune.uniform(1e-4, 1e-3)}).scheduler.rungs_in == "periods"
    assert sweep({"n_critic": tune.choice([1, 5])}, scheduler=Promotion(rungs_in="periods")).scheduler.rungs_in == "periods"
    # The probe's period: 10 cpu-s, 8 of them training (2 s a period of evaluation and checkpoint).
    probe = PeriodCost(setup_s=5.0, period_s=10.0, held=1, kimg=3.2, train_s=8.0)
    assert probe.rung_cost("cpu-s") == ("train_compute_s", 8.0) and probe.rung_cost("kimg") == ("kimg", 3.2)
    assert dataclasses.replace(probe, train_s=None).rung_cost("cpu-s") == ("compute_s", 10.0)
    plan = dataclasses.replace(plan_budget(540, probe.per_period("cpu-s", 2)), rung_cost=probe.rung_cost("cpu-s"))
    rungs = build_scheduler(costly, plan).rungs
    assert rungs.periods == plan.rungs and rungs.compute_attr == "train_compute_s"
    assert rungs.compute == tuple((r - 0.5) * 8.0 for r in plan.rungs[:-1])
    periods_only = costly.with_(scheduler=Promotion(rungs_in="periods"))
    assert build_scheduler(periods_only, plan).rungs.compute == ()
    assert build_scheduler(costly.with_(budget=None)).rungs.compute == ()  # no measured cost: periods
    with pytest.raises(SweepError, match="scheduler.rungs_in: 'flops'"):
        Promotion(rungs_in="flops")


@pytest.mark.parametrize("num_evals, rungs", [(2, (2,)), (3, (2, 3)), (8, (2, 8)), (9, (2, 6, 9)), (20, (2, 6, 20)),
                                              (26, (2, 6, 26)), (27, (2, 6, 18, 27)), (100, (2, 6, 18, 54, 100))])
def test_without_a_budget_rungs_grow_by_eta_while_max_t_is_at_least_one_and_a_half_times_them(num_evals, rungs):
    # By hand: rungs 2, 6, 18, 54 (2 x 3^i), each kept where it is at most num_evals / 1.5.
    plan = fixed_plan(num_evals, 7)
    assert plan.rungs == rungs and plan.configs == (7,) and plan.brackets == 1
    assert math.isnan(plan.cost) and math.isnan(plan.cost_per_period)


def test_describe_says_bracket_or_brackets_and_a_cost_only_where_known():
    one = describe(fixed_plan(20, 5))
    assert one[0].endswith("5 configurations in 1 bracket") and not any("expected cost" in line for line in one)
    two = describe(plan_budget(1800, 20.0))
    assert two[0].endswith("brackets")
    without_unit = describe(plan_budget(1800, 20.0))[-1]
    assert re.fullmatch(r"  expected cost \S+ \(\S+ per eval period\)", without_unit), without_unit
    assert without_unit == "  expected cost 1800 (20 per eval period)"
    # 16 periods: rungs 2, 6 (P(1, 0) = 3*2 + 4 = 10; P(2, 0) = 42 > 16), brackets 10 + 6 = 16 fit exactly.
    assert describe(plan_budget(16, 1.0))[0] == \
        "budget plan: eta 3, rungs 2, 6 eval periods (max_t 6), 4 configurations in 2 brackets"


@pytest.mark.parametrize("budget, cost", [(0.0, 1.0), (-1.0, 1.0), (math.inf, 1.0), (100.0, 0.0), (100.0, math.inf)])
def test_a_budget_or_cost_that_is_not_a_positive_number_is_refused_by_value(budget, cost):
    with pytest.raises(ValueError, match=re.escape(f"got {budget!r} and {cost!r}")):
        plan_budget(budget, cost)


@pytest.mark.parametrize("eta, first_rung, max_brackets", [(1, 2, 3), (3, 0, 3), (3, 2, 0)])
def test_eta_below_2_a_first_rung_below_1_or_no_bracket_is_refused(eta, first_rung, max_brackets):
    with pytest.raises(ValueError, match=re.escape(f"got {eta}, {first_rung}, {max_brackets}")):
        plan_budget(1800, 20.0, eta=eta, first_rung=first_rung, max_brackets=max_brackets)
    assert plan_budget(0.5, 0.01, eta=2, first_rung=1, max_brackets=1).brackets == 1  # the smallest valid values


def test_three_brackets_at_most_by_default_though_a_fourth_would_fit():
    # 432 periods: rungs 2, 6, 18, 54 (P(3, 0) = 27*2 + 9*4 + 3*12 + 36 = 162; P(4, 0) = 162 * 11/3 = 594 > 432).
    # P(3, s) = 162, 126 (9*6 + 3*12 + 36), 90 (3*18 + 36), 54: all four sum to 432, three to 378.
    plan = plan_budget(432, 1.0)
    assert (plan.rungs, plan.configs, plan.cost) == ((2, 6, 18, 54), (27, 9, 3), 378)
    assert plan_budget(432, 1.0, max_brackets=4).configs == (27, 9, 3, 1)


def test_a_rung_exactly_at_the_horizon_cap_is_kept():
    # A trial may train max_horizon periods: cap 18 plans as cap 20 does (rungs 2, 6, 18; widths 2).
    plan = plan_budget(200, 1.0, max_horizon=18)
    assert (plan.rungs, plan.configs, plan.cost) == ((2, 6, 18), (18, 6, 2), 180)


def test_a_horizon_of_the_first_rung_is_one_rung_and_a_shorter_one_is_refused_by_value():
    # 100 periods, no promotion possible: floor(100 / 2) = 50 configurations of 2 periods.
    plan = plan_budget(100, 1.0, max_horizon=2)
    assert (plan.rungs, plan.configs, plan.cost) == ((2,), (50,), 100)
    with pytest.raises(SweepError, match=r"^budget: a trial's 1 eval periods are fewer than the first rung's 2$"):
        plan_budget(100, 1.0, max_horizon=1)


def test_a_budget_short_of_a_plans_cost_by_float_rounding_still_pays_for_it():
    # 42 at 1 + 1e-9 a period: 42 / (1 + 1e-9) periods, short of the 42 that rungs 2, 6, 18 cost by the slack
    # (1e-9) exactly. Twice that short, rung 18 is out: rungs 2, 6, brackets 10 + 6 = 16, width floor(41.99 / 16).
    assert plan_budget(42, 1 + 1e-9).configs == (9,) and plan_budget(42, 1 + 1e-9).rungs == (2, 6, 18)
    assert plan_budget(42, 1 + 2e-9).configs == (6, 2) and plan_budget(42, 1 + 2e-9).rungs == (2, 6)
