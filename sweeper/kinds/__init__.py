"""What differs per kind of trial (a GAN, a classifier, your own trainable): the inputs the trials
share, the reference statistics, generators as inputs, the final measure and the registered model.

A kind belongs to one config dataclass; `kind_of(config)` finds it, and `complete(sweep)` fills
what a search-space file leaves out (trainable, metric, mode, `--quick` budget) from it.
"""
from __future__ import annotations

import dataclasses

from sweeper.definition import AUTO, Promotion, Quick, Sweep, parse_budget
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
    return dataclasses.replace(sweep, **changes)


def _rungs_in(kind: Kind, sweep: Sweep) -> str:
    """"compute" where the space searches a key that changes the cost of a period (Promotion)."""
    try:
        searched = sweep.searched_keys()
    except Exception:  # noqa: BLE001 - a broken space: Sweep.validate() names its error on one line
        return AUTO
    return "compute" if set(kind.cost_keys) & searched else "periods"


__all__ = ["Kind", "Inputs", "kind_of", "complete", "GAN", "CLASSIFIER"]
