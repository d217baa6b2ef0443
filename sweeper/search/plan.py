"""How a compute budget is spent: the rungs, the brackets and how many configurations each starts.

Pure arithmetic, no Ray. The rule, in units of one eval period of one trial (`cost_per_period`, in
the budget's unit: gpu-s per period as measured, or kimg per period):

* Rung horizons are r_i = first_rung * eta^i eval periods; a plan with top rung k has
  rungs (r_0, ..., r_k) and max_t = r_k.
* Bracket s (0 <= s < brackets) starts its configurations at rung s: they train r_s periods
  before their first comparison, and the top 1/eta of each rung go on to the next (promotion:
  a paused trial resumes from its checkpoint, so a trial stopped at rung i trained r_i periods in
  all). Bracket s of width w starts n_s = w * eta^(k-s) configurations; w * eta^(k-i) of them
  reach rung i (s <= i <= k), so w reach max_t.
* Bracket s of width 1 then costs
      P(k, s) = eta^(k-s) * r_s + sum_{i=s+1..k} eta^(k-i) * (r_i - r_{i-1})  periods
  (every starter trains to r_s; each of the eta^(k-i) trials entering rung i trains r_i - r_{i-1}
  more). Both terms come to r_k, so P(k, s) = r_k * (1 + (k - s) * (eta - 1) / eta).
* Choice, each step given the ones before:
  1. k: the largest with P(k, 0) * c <= budget (c = cost_per_period; with k = 0, the widest
     bracket's 1 configuration is too few: it needs w >= eta, so eta * r_0 * c <= budget), and
     r_k <= max_horizon where one is given. The longest horizon the budget pays for comes first:
     the point is that the best configurations train to a real horizon.
  2. brackets B: the most, at most max_brackets and k + 1, with sum_{s<B} P(k, s) * c <= budget.
     More brackets start some configurations later (at a longer first rung): a hedge against a
     first rung too short to tell configurations apart.
  3. width w = floor(budget / (sum_{s<B} P(k, s) * c)): what is left widens every bracket.
  The expected cost is w * sum_{s<B} P(k, s) * c.

Worked example (eta 3, first rung 2, budget 54 periods at c = 1): rungs 2, 6, 18; P(2, 0) = 9*2 +
3*4 + 1*12 = 42 <= 54, while P(3, 0) = 54 * 3 = 162 > 54, so k = 2; P(2, 1) = 3*6 + 1*12 = 30 and
42 + 30 > 54, so one bracket; w = floor(54 / 42) = 1: 9 configurations, 3 reach period 6, 1 period
18, expected cost 42.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from sweeper.definition.options import SweepError

_SLACK = 1e-9  # a plan that costs the budget exactly fits it, float rounding aside


@dataclass(frozen=True)
class Plan:
    eta: int
    rungs: tuple[int, ...]    # rung horizons in eval periods, ascending; rungs[-1] is max_t
    configs: tuple[int, ...]  # configurations bracket s starts (at rungs[s]), one entry per bracket
    cost: float               # expected total, in the budget's unit
    cost_per_period: float    # one eval period of one trial, in the budget's unit
    # Where rungs may be in compute: the metric they would count and one period of the measured
    # config in it (sweeper.search.cost.PeriodCost.rung_cost); None: unknown (no budget).
    rung_cost: tuple[str, float] | None = None

    @property
    def brackets(self) -> int:
        return len(self.configs)

    @property
    def max_t(self) -> int:
        return self.rungs[-1]

    @property
    def num_samples(self) -> int:
        return sum(self.configs)

    def reaching(self, s: int) -> list[int]:
        """How many of bracket s's configurations reach each of its rungs (rungs[s:])."""
        k, width = len(self.rungs) - 1, self.configs[s] // self.eta ** (len(self.rungs) - 1 - s)
        return [width * self.eta ** (k - i) for i in range(s, k + 1)]


def bracket_periods(rungs: tuple[int, ...], s: int, eta: int) -> int:
    """P(k, s): eval periods that bracket s of width 1 trains in all (module docstring)."""
    k = len(rungs) - 1
    return eta ** (k - s) * rungs[s] + sum(eta ** (k - i) * (rungs[i] - rungs[i - 1]) for i in range(s + 1, k + 1))


def plan_budget(budget_amount: float, cost_per_period: float, *, eta: int = 3, first_rung: int = 2,
                max_brackets: int = 3, max_horizon: int | None = None) -> Plan:
    """The plan the module docstring's rule gives. `max_horizon`: the longest a trial may train (in
    eval periods, e.g. its config's num_evals), None for no limit."""
    _check(budget_amount, cost_per_period, eta, first_rung, max_brackets)
    periods = budget_amount / cost_per_period
    if max_horizon is not None and max_horizon < first_rung:
        raise SweepError(f"budget: a trial's {max_horizon} eval periods are fewer than the first rung's {first_rung}")
    if not _fits(eta * first_rung, periods):
        raise SweepError(f"budget {budget_amount:g}: pays for {periods:.3g} eval periods at {cost_per_period:g} "
                         f"per period, fewer than {eta} configurations x {first_rung} periods (the first rung)")
    k = 0
    while _horizon_fits(first_rung * eta ** (k + 1), max_horizon) and \
            _fits(bracket_periods(_rungs(first_rung, eta, k + 1), 0, eta), periods):
        k += 1
    rungs = _rungs(first_rung, eta, k)
    per_bracket = [bracket_periods(rungs, s, eta) for s in range(min(max_brackets, k + 1))]
    while not _fits(sum(per_bracket), periods):
        per_bracket.pop()
    width = int(periods * (1 + _SLACK) // sum(per_bracket))
    configs = tuple(width * eta ** (k - s) for s in range(len(per_bracket)))
    return Plan(eta=eta, rungs=rungs, configs=configs, cost=width * sum(per_bracket) * cost_per_period,
                cost_per_period=cost_per_period)


def fixed_plan(num_evals: int, num_samples: int, *, eta: int = 3, first_rung: int = 2) -> Plan:
    """Without a budget: one bracket of `num_samples` configurations, rungs at first_rung * eta^i
    and num_evals (max_t) as the last. A rung is kept only where max_t is at least 1.5 times it
    (20 evals: rungs 2, 6, 20, not 2, 6, 18, 20, where pausing at 18 to promote to 20 would buy a
    comparison that says almost nothing new). Its cost is unknown (NaN)."""
    rungs = tuple(r for r in _rungs(first_rung, eta, _levels(first_rung, eta, num_evals)) if 1.5 * r <= num_evals)
    return Plan(eta=eta, rungs=(*rungs, num_evals), configs=(num_samples,), cost=math.nan, cost_per_period=math.nan)


def _levels(first_rung: int, eta: int, up_to: int) -> int:
    k = 0
    while first_rung * eta ** (k + 1) <= up_to:
        k += 1
    return k


def describe(plan: Plan, unit: str = "") -> list[str]:
    """Lines for the console: the rungs, each bracket's configurations per rung, the expected cost."""
    unit = f" {unit}" if unit else ""
    lines = [f"budget plan: eta {plan.eta}, rungs {', '.join(map(str, plan.rungs))} eval periods "
             f"(max_t {plan.max_t}), {plan.num_samples} configurations in {plan.brackets} "
             f"bracket{'s' if plan.brackets > 1 else ''}"]
    for s in range(plan.brackets):
        steps = " -> ".join(f"{n} at {r}" for n, r in zip(plan.reaching(s), plan.rungs[s:]))
        lines.append(f"  bracket {s}: {steps}")
    if not math.isnan(plan.cost):
        lines.append(f"  expected cost {plan.cost:g}{unit} ({plan.cost_per_period:g}{unit} per eval period)")
    return lines


def _rungs(first_rung: int, eta: int, k: int) -> tuple[int, ...]:
    return tuple(first_rung * eta ** i for i in range(k + 1))


def _fits(cost_in_periods: float, periods: float) -> bool:
    return cost_in_periods <= periods * (1 + _SLACK)


def _horizon_fits(horizon: int, max_horizon: int | None) -> bool:
    return max_horizon is None or horizon <= max_horizon


def _check(budget_amount: float, cost_per_period: float, eta: int, first_rung: int, max_brackets: int) -> None:
    if not (0 < budget_amount < math.inf and 0 < cost_per_period < math.inf):
        raise ValueError(f"budget and cost per period must be > 0, got {budget_amount!r} and {cost_per_period!r}")
    if eta < 2 or first_rung < 1 or max_brackets < 1:
        raise ValueError(f"need eta >= 2, first_rung >= 1, max_brackets >= 1; got {eta}, {first_rung}, {max_brackets}")
