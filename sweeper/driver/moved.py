"""Where sweeper's classes and functions lived before the package was layered, so that what an
older sweeper pickled (a sweep's `sweep.pkl`, Tune's `tuner.pkl` with the trainable, searcher,
scheduler and console it names) still loads: `sweeper resume` of a sweep started before the move.

Pickles name a class by module and attribute; while `old_module_names()` is active, each old
module name is a stand-in module holding the same objects under their old names.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import types

# old module -> (new module, {old attribute: new attribute} where a name changed)
OLD_MODULES = {
    "sweeper.spec": ("sweeper.definition", {}),
    "sweeper.space": ("sweeper.definition.space", {}),
    "sweeper.tasks": ("sweeper.kinds", {"Task": "Kind", "task_for": "kind_of"}),
    "sweeper.tasks.base": ("sweeper.kinds.base", {"Task": "Kind"}),
    "sweeper.tasks.gan": ("sweeper.kinds.gan", {"GANTask": "GANKind"}),
    "sweeper.tasks.classifier": ("sweeper.kinds.classifier", {"ClassifierTask": "ClassifierKind"}),
    "sweeper.refstats": ("sweeper.kinds.refstats", {}),
    "sweeper.shipped": ("sweeper.kinds.shipped", {}),
    "sweeper.generators": ("sweeper.kinds.generators", {}),
    "sweeper.outcomes": ("sweeper.tracking.outcomes", {}),
    "sweeper.registry": ("sweeper.tracking.registry", {}),
    "sweeper.scheduler": ("sweeper.search.scheduler", {}),
    "sweeper.tuner": ("sweeper.search.tuner", {}),
    "sweeper.footprint": ("sweeper.search.footprint", {}),
    "sweeper.console": ("sweeper.search.console", {}),
    "sweeper.delivery": ("sweeper.trial.delivery", {}),
}
# Not here: sweeper.trial, sweeper.search and sweeper.tracking, now packages, whose __init__ exports
# what pickles named there (run_trial, SweepSearch, Tracking).


@contextlib.contextmanager
def old_module_names():
    """Old module names importable for the duration (nothing else of sys.modules changes)."""
    added = {}
    for old, (new, renamed) in OLD_MODULES.items():
        if old in sys.modules:
            continue
        module = types.ModuleType(old)
        module.__dict__.update(vars(importlib.import_module(new)))
        for before, now in renamed.items():
            setattr(module, before, getattr(module, now))
        added[old] = sys.modules[old] = module
    try:
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)
