"""Population-based training of a sweep: Ray Tune's PBT and PB2, ranking members by the per-eval
metric and starting from the searcher's proposals.

Ray's schedulers do the work (who exploits whom, when, and the perturbations); what is sweeper's:
- the rank is the *current* per-eval metric (`fid`), not the objective (`fid_best`): a member whose
  FID got worse must be replaced, even if it once was good;
- the initial population is the searcher's first proposals (warm starts first): Ray refuses any
  searcher with PBT (sweeper.compat.pbt_accepts_a_searcher says why that does not apply here);
- a mutated key the space does not search starts at the sweep config's value, not at a random draw
  (Ray fills a missing key from its mutation), so a hand-tuned warm start starts as written;
- a perturbed value stays within its Range (Ray's PBT multiplies by 0.8 or 1.2 without bound; PB2's
  float32 proposals land a rounding outside their bounds);
- no member takes a checkpoint at the last period (it would train nothing more);
- every checkpoint is kept while the sweep runs (sweeper.search.tuner): Tune would delete a donor's
  a moment before its clone restores from it, and Ray's PBT registers the checkpoint it exploits a
  second time, which makes Tune delete it twice;
- each exploit counts the member's generation in its Tune config (GENERATION_KEY) and prints one
  line: who took whose checkpoint at which period, and what changed.
What a clone does with the checkpoint (a new MLflow run, the new values applied to its optimisers)
happens in the trial: sweeper.trial.lineage and trainables.training.mutation.
"""
from __future__ import annotations

import functools

from ray import tune
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers import pbt as ray_pbt
from ray.tune.schedulers.pb2 import PB2 as RayPB2  # not in Ray's package namespace (lazy there)

from sweeper.compat import after_each_exploit, pbt_accepts_a_searcher
from sweeper.definition import GENERATION_KEY, PBT, Range, Sweep
from sweeper.tracking.runs import STEP_METRIC as STEP


class _Population:
    """What SweepPBT and SweepPB2 add to Ray's scheduler of the same name."""

    def __init__(self, *, starts: dict, horizon: int, **kwargs):
        """`starts`: each mutated key's value where a trial's config lacks it (the sweep config's);
        `horizon`: the eval period every member ends at."""
        super().__init__(**kwargs)
        self.starts, self.horizon = starts, horizon

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(STEP, 0) >= self.horizon:
            return self.CONTINUE  # the member has ended: a clone now would train nothing
        return super().on_trial_result(tune_controller, trial, result)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        # Tune offers the sweep's objective (fid_best); the population keeps ranking by its own metric.
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        for key, value in self.starts.items():
            trial.config.setdefault(key, value)
        with pbt_accepts_a_searcher(ray_pbt):
            super().on_trial_add(tune_controller, trial)


class SweepPBT(_Population, PopulationBasedTraining):
    pass


class SweepPB2(_Population, RayPB2):
    pass


def _after_exploit(scheduler, trial, donor, before: dict, donor_result: dict) -> None:
    """The member's next generation (its trial config's GENERATION_KEY, from its config before the
    exploit: a resumed driver counts on), and the console line."""
    trial.config[GENERATION_KEY] = before.get(GENERATION_KEY, 0) + 1
    changed = ", ".join(f"{key} {_short(before.get(key))} -> {_short(trial.config.get(key))}"
                        for key in sorted(scheduler.starts) if trial.config.get(key) != before.get(key))
    period = donor_result.get(STEP, "?")
    print(f"{trial.trial_id}  exploit: takes {donor.trial_id}'s checkpoint at period {period}"
          f"{'; ' + changed if changed else '; no value changed'}", flush=True)


for _class in (SweepPBT, SweepPB2):
    after_each_exploit(_class, _after_exploit)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)  # 0.9999, not 1


def build_population(sweep: Sweep, time_attr: str):
    """The sweep's PBT or PB2 (its mutations or bounds filled by its kind: sweeper.kinds.complete)."""
    scheduler = sweep.scheduler
    common = dict(horizon=sweep.config.num_evals, time_attr=time_attr, metric=sweep.metric, mode=sweep.mode,
                  perturbation_interval=scheduler.interval, quantile_fraction=scheduler.quantile)
    if isinstance(scheduler, PBT):
        mutations = scheduler.mutations
        starts = {key: getattr(sweep.config, key) for key in mutations}
        return SweepPBT(starts=starts, hyperparam_mutations={k: _ray_domain(v) for k, v in mutations.items()},
                        resample_probability=scheduler.resample_probability,
                        custom_explore_fn=functools.partial(keep_within, {k: v for k, v in mutations.items()
                                                                          if isinstance(v, Range)}),
                        **common)
    starts = {key: getattr(sweep.config, key) for key in scheduler.bounds}
    # PB2's proposals are float32 values a rounding outside their bounds: kept within too.
    return SweepPB2(starts=starts, hyperparam_bounds={k: list(v) for k, v in scheduler.bounds.items()},
                    custom_explore_fn=functools.partial(keep_within, {k: Range(*v) for k, v in scheduler.bounds.items()}),
                    **common)


def _ray_domain(values):
    if isinstance(values, Range):
        return tune.loguniform(values.low, values.high) if values.log else tune.uniform(values.low, values.high)
    return list(values)


def keep_within(ranges: dict, config: dict) -> dict:
    """`config` with each Range key clipped into its range (PBT's custom_explore_fn)."""
    return {**config, **{key: min(max(config[key], r.low), r.high) for key, r in ranges.items() if key in config}}
