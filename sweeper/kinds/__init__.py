"""What differs per kind of trial (a GAN, a classifier, your own trainable): the inputs the trials
share, the reference statistics, generators as inputs, the final measure and the registered model.

A kind belongs to one config dataclass; `kind_of(config)` finds it, and `complete(sweep)` fills
what a search-space file leaves out (trainable, metric, mode, `--quick` budget) from it.
"""
from __future__ import annotations

import dataclasses

from sweeper.definition import AUTO, PB2, PBT, Promotion, Quick, Sweep, SweepError, parse_budget
from sweeper.kinds.base import Inputs, Kind
from sweeper.kinds.classifier import CLASSIFIER
from sweeper.kinds.gan import GAN


def kind_of(config) -> Kind:
    """The kind of trial a config is for; the base Kind for a config of the user's own."""
    return next((kind for kind in (GAN, CLASSIFIER) if isinstance(config, kind.config_type)), Kind())


def complete(sweep: Sweep) -> Sweep:
    """The sweep with what its file left out (None, or "auto" for the scheduler) filled by its kind;
    what it set stays. A budget given as text is parsed."""
    kind = kind_of(sweep.config)
    defaults = {"trainable": kind.trainable(), "metric": kind.metric, "mode": kind.mode,
                "quick": kind.quick or Quick()}
    changes = {k: v for k, v in defaults.items() if getattr(sweep, k) is None}
    if isinstance(sweep.scheduler, str) and sweep.scheduler == AUTO:
        changes["scheduler"] = kind.scheduler
    if isinstance(sweep.budget, str):
        changes["budget"] = parse_budget(sweep.budget)
    scheduler = changes.get("scheduler", sweep.scheduler)
    if isinstance(scheduler, Promotion) and scheduler.rungs_in == AUTO:
        changes["scheduler"] = dataclasses.replace(scheduler, rungs_in=_rungs_in(kind, sweep))
    if isinstance(scheduler, (PBT, PB2)):
        changes["scheduler"] = _population(kind, sweep.config, scheduler, changes.get("budget", sweep.budget))
    return dataclasses.replace(sweep, **changes)


def _population(kind: Kind, config, scheduler, budget):
    """PBT's mutations or PB2's bounds, the kind's where the file gives none; each key one the kind's
    trials can change mid-run."""
    field = "mutations" if isinstance(scheduler, PBT) else "bounds"
    given = getattr(scheduler, field)
    if not kind.mutable_keys:
        raise SweepError(f"scheduler: {type(scheduler).__name__} needs trials that can take another's checkpoint "
                         f"with new hyperparameters; {type(config).__name__}'s cannot")
    for key in given or {}:
        if key not in kind.mutable_keys:
            raise SweepError(f"scheduler.{field}[{key!r}]: cannot change in the middle of a run (a checkpoint's "
                             f"tensors or optimiser state would not fit); mutable: {', '.join(kind.mutable_keys)}")
    if budget is not None and budget.unit == "kimg":
        # Spending counts each trial's reported kimg, and a clone reports its donor's images as its own.
        raise SweepError(f"budget: {budget} in kimg counts a {type(scheduler).__name__} clone's inherited images "
                         f"again; give the budget in device time (e.g. 2gpu-h, 30cpu-min)")
    if given is not None:
        return scheduler
    return dataclasses.replace(scheduler, **{field: getattr(kind, field)(config)})


def _rungs_in(kind: Kind, sweep: Sweep) -> str:
    """"compute" where the space searches a key that changes the cost of a period (Promotion)."""
    try:
        searched = sweep.searched_keys()
    except Exception:  # noqa: BLE001 - a broken space: Sweep.validate() names its error on one line
        return AUTO
    return "compute" if set(kind.cost_keys) & searched else "periods"


__all__ = ["Kind", "Inputs", "kind_of", "complete", "GAN", "CLASSIFIER"]
