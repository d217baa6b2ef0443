"""A budgeted sweep's shape, decided once before the trials start and recorded with the sweep.

With `Promotion` (the default for GANs) the budget decides the rungs, the horizon (the trials'
num_evals = the plan's max_t, so a paused trial's curve is the start of the same full-horizon run)
and how many configurations start (sweeper.search.plan), from the measured cost of an eval
period (sweeper.search.cost), whose probe is paid from the budget. With ASHA or FIFO the sweep
runs as written and stops when its trials have spent the budget. A resumed sweep was planned when
it started: the recorded sweep already has its plan's num_evals, num_samples and budget.
"""
from __future__ import annotations

import dataclasses

from sweeper.definition import Budget, Promotion, Sweep
from sweeper.search.cost import check_unit, measure_period_cost
from sweeper.search.plan import Plan, describe, plan_budget


def plan_sweep(sweep: Sweep, kind, shared: dict, per_trial: dict) -> tuple[Sweep, Plan | None, list[str]]:
    """(the sweep to run, its plan or None, console lines)."""
    budget = sweep.budget
    if budget is None:
        return sweep, None, []
    check_unit(budget, per_trial)
    if not isinstance(sweep.scheduler, Promotion):
        return sweep, None, [f"budget {budget}: the sweep stops once its trials have spent it "
                             f"({sweep.num_samples} trials of at most {sweep.config.num_evals} eval periods)"]
    promotion = sweep.scheduler
    cost = measure_period_cost(sweep, kind, shared, per_trial)
    left = Budget(max(budget.amount - cost.spent(budget.unit), 1e-9), budget.unit)
    plan = plan_budget(left.amount, cost.per_period(budget.unit, promotion.first_rung),
                       eta=promotion.reduction_factor, first_rung=promotion.first_rung,
                       max_brackets=promotion.max_brackets)
    plan = dataclasses.replace(plan, rung_cost=cost.rung_cost(budget.unit))
    # The plan's count is what its estimated cost pays for, rounded down; the budget's admission
    # (sweeper.search.spending), at the cost the trials measure, decides how many really start:
    # fewer where a period costs more, up to twice as many where the rounding or the estimate left room.
    planned = sweep.with_(config=sweep.config.replace(num_evals=plan.max_t), num_samples=2 * plan.num_samples,
                          budget=left).validate()
    lines = [cost.line(budget), *describe(plan, budget.unit),
             f"  the trials may spend {left} (the budget less the probe); the sweep stops when they have"]
    if promotion.rungs_in == "compute" and len(plan.rungs) > 1:
        attr, per_period = plan.rung_cost
        costly = ", ".join(sorted(set(kind.cost_keys) & sweep.searched_keys())) or "the space"
        lines.append(f"  rungs in compute ({costly} searched: trials differ in cost per period): a trial reaches "
                     f"rung {plan.rungs[0]} at {attr} {(plan.rungs[0] - 0.5) * per_period:.4g} ({per_period:.4g} a "
                     f"period of the probe's config), ...; the last rung is {plan.max_t} periods, the end of "
                     f"every trial's schedule")
    return planned, plan, lines


def plan_params(plan: Plan | None, given: Budget | None) -> dict:
    """The plan as the parent run's params."""
    if plan is None:
        return {"budget": str(given)} if given is not None else {}
    return {"budget": str(given), "plan.rungs": ",".join(map(str, plan.rungs)),
            "plan.brackets": ",".join(map(str, plan.configs)), "plan.eta": plan.eta,
            "plan.cost_per_period": f"{plan.cost_per_period:.6g}", "plan.expected_cost": f"{plan.cost:.6g}",
            **({"plan.rung_cost": f"{plan.rung_cost[0]}={plan.rung_cost[1]:.6g}"} if plan.rung_cost else {})}
