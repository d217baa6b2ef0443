"""What the sweep machinery asks of one kind of trial (a GAN, a classifier, your own).

A Kind belongs to one config dataclass (`sweeper.kinds.kind_of(config)` finds it). Everything the
driver does that depends on *what* is trained lives in a Kind: checking the inputs before anything
starts, preparing what every trial shares, turning that into a trial's arguments on the trial's
own node, measuring the best checkpoints once more, and publishing the winner as a model.

The base class is what a trainable with its own config gets: `fn(cfg, report, restore_from=None)`
receives nothing shared, the sweep's metric at the best checkpoint picks the winner (no final
re-measurement), and nothing is registered.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from sweeper.definition import ASHA
from trainables.config import Config


@dataclass
class Inputs:
    """What the driver prepared for the trials of one sweep."""
    trial: dict = field(default_factory=dict)   # every trial's shared values (the object store carries them once)
    final: dict = field(default_factory=dict)   # what only the final evaluation sees (e.g. a held-out test split)
    params: dict = field(default_factory=dict)  # MLflow params of the parent and of every trial run (lineage)
    tags: dict = field(default_factory=dict)    # MLflow tags of the parent and of every trial run
    parent_tags: dict = field(default_factory=dict)
    final_tags: dict = field(default_factory=dict)  # set on the runs the final evaluation measured
    footing: dict = field(default_factory=dict)  # registry tags that make two final numbers comparable
    # Text files written into the registered version's run (artifact path -> text): what it was trained on.
    lineage: dict = field(default_factory=dict)
    measured_on: str = ""                        # how the final number was measured, for the console
    lines: list = field(default_factory=list)    # console lines before the trials start


class Kind:
    config_type: type = Config
    metric: str | None = None        # the sweep's default metric and mode (ASHA, Optuna, checkpoints)
    mode: str | None = None
    final_metric: str | None = None  # what the final evaluation measures; None: there is none
    final_mode: str | None = None
    # The metric of the final evaluation's selection draw, measured on every candidate to pick each
    # group's best, which only then gets `final_metric` on an independent draw (sweeper.driver.final;
    # the GAN's `fid_select`). None: every candidate is measured once, and the winner is picked by
    # something else (`winner_by`; the classifier's validation accuracy).
    select_metric: str | None = None
    model_kind: str | None = None    # registered as `<sweep>-<model_kind>`; None: nothing registered
    shown_metrics: tuple = ()        # on the console beside the sweep's metric (sweeper.search.console)
    quick = None                     # the `--quick` budget (a sweeper.definition.Quick)
    scheduler = ASHA()               # the sweep's default scheduler (Sweep(scheduler="auto"))
    # Config keys that change what an eval period costs: where a space searches one, Promotion's
    # rungs are in compute (Promotion.rungs_in="auto").
    cost_keys: tuple = ()
    # Config changes that shorten the one eval period sweeper.search.footprint runs to measure a trial's
    # GPU memory (Resources(gpu_fraction="auto")); num_evals is set to 1 anyway.
    footprint_changes: dict = {}
    # Config keys a trial restored from another's checkpoint can train on with a new value (what
    # PBT/PB2 may mutate); empty: the kind's trials cannot be a population.
    mutable_keys: tuple = ()

    def mutations(self, config) -> dict:
        """PBT's default mutations for a sweep of `config` (sweeper.definition.PBT)."""
        return {}

    def bounds(self, config) -> dict:
        """PB2's default bounds for a sweep of `config` (sweeper.definition.PB2)."""
        return {}

    def trainable(self) -> Callable | None:
        """The default trainable of this config type; None: a Sweep must name one."""
        return None

    def check(self, sweep) -> None:
        """Cheap checks before anything starts (no decoding, no Ray); raise a BadInput (trainables.errors) naming the culprit."""

    def prepare(self, sweep):
        """Driver, before Ray starts: the heavy shared work (data); handed to `inputs`."""
        return None

    def inputs(self, sweep, prepared, available: dict) -> Inputs:
        """Driver, once Ray runs (`available` = Ray's cluster resources)."""
        return Inputs()

    def run_params(self, cfg) -> dict:
        """In the trial's process: the MLflow params of its run, the config fields that apply to it
        (the GAN kind adds the device and precision resolved on that machine)."""
        skip = cfg.inapplicable_keys()
        return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}

    def trial_kwargs(self, cfg, shared: dict) -> dict:
        """In the trial's process: the trainable's keyword arguments from the shared values (e.g. a
        feature extractor or generators built on the trial's device)."""
        return dict(shared)

    def group(self, cfg, warm_start: bool) -> str:
        """The final evaluation measures the top trials of each group."""
        return "warm-start" if warm_start else "searched"

    def winner_by(self, sweep) -> tuple[str, str]:
        """(table column, mode) that picks the sweep's winner among the measured trials."""
        if self.final_metric is None:
            return f"best_{sweep.metric}", sweep.mode
        return self.final_metric, self.final_mode

    def measure(self, cfg, checkpoint_dir: str, shared: dict) -> tuple[dict, dict]:
        """A checkpoint measured again: (metrics, {file name: bytes} to keep in the trial's run)."""
        raise NotImplementedError

    def summarise(self, sweep, table: pd.DataFrame) -> tuple[dict, list[str]]:
        """(metrics for the parent run, console lines) comparing the groups, e.g. with a baseline."""
        return {}, []

    def log_model(self, tracking, run_id: str, cfg, checkpoint_dir: str, name: str) -> str:
        """Logs the checkpoint's model into `run_id`, registered as `name`; returns the version."""
        raise NotImplementedError

    def describe(self, sweep) -> list[str]:
        """`--dry-run` lines about what this kind of trial measures."""
        return []
