"""What differs per kind of trial (a GAN, a classifier, your own trainable): the inputs the trials
share, the reference statistics, generators as inputs, the final measure and the registered model.

A kind belongs to one config dataclass; `kind_of(config)` finds it, and `complete(sweep)` fills
what a search-space file leaves out (trainable, metric, mode, `--quick` budget) from it.
"""
from __future__ import annotations

import dataclasses

from sweeper.definition import Quick, Sweep
from sweeper.kinds.base import Inputs, Kind
from sweeper.kinds.classifier import CLASSIFIER
from sweeper.kinds.gan import GAN


def kind_of(config) -> Kind:
    """The kind of trial a config is for; the base Kind for a config of the user's own."""
    return next((kind for kind in (GAN, CLASSIFIER) if isinstance(config, kind.config_type)), Kind())


def complete(sweep: Sweep) -> Sweep:
    """The sweep with what its file left out (None) filled by its kind; what it set stays."""
    kind = kind_of(sweep.config)
    defaults = {"trainable": kind.trainable(), "metric": kind.metric, "mode": kind.mode,
                "quick": kind.quick or Quick()}
    return dataclasses.replace(sweep, **{k: v for k, v in defaults.items() if getattr(sweep, k) is None})


__all__ = ["Kind", "Inputs", "kind_of", "complete", "GAN", "CLASSIFIER"]
