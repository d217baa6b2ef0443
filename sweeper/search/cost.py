"""What one eval period of a trial costs, measured before a budgeted sweep is planned.

The probe trains the sweep's config (with its first warm start's searched values, where it has one)
for two eval periods in a Ray task holding one trial's resources, as a trial would: the first
period's start-up (data, models, FID extractor) and the second, steady period are timed apart.
Its own cost is spent from the budget. A trial's start-up is paid again at every resume from a
pause, so the plan counts it once per `first_rung` periods (`PeriodCost.per_period`): an
estimate, which the budget's hard stop (sweeper.search.spending) makes safe.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from sweeper.definition import Budget, SweepError

PERIODS = 2
# A period's training seconds, as a trainable may report them (the GAN loop does), and the trial's
# running sum x devices held (sweeper.trial.ledger): what rungs in compute count.
TRAIN_S, TRAIN_COMPUTE_S = "train_s", "train_compute_s"


@dataclass(frozen=True)
class PeriodCost:
    setup_s: float       # wall seconds from the start to the first period's training (data, models, extractor)
    period_s: float      # wall seconds of one steady eval period (training, evaluation, checkpoint)
    held: float          # devices a trial holds: GPUs where it holds any, else CPUs
    kimg: float | None   # kimg per eval period, where the trainable reports `kimg`
    train_s: float | None = None  # the steady period's training seconds, where the trainable reports `train_s`

    def per_period(self, unit: str, first_rung: int) -> float:
        """One eval period of one trial in the budget's unit, its start-up spread over a first rung."""
        if unit == "kimg":
            return self.kimg
        return (self.period_s + self.setup_s / first_rung) * self.held

    def rung_cost(self, unit: str) -> tuple[str, float]:
        """(the metric rungs in compute count, one period of the probe's config in it): kimg for a
        kimg budget; else the training compute (`train_compute_s`) where the trainable reports
        `train_s`, else `compute_s`, start-up and evaluation included (a first rung then comes
        early by the start-up's share)."""
        if unit == "kimg":
            return "kimg", self.kimg
        if self.train_s:
            return TRAIN_COMPUTE_S, self.train_s * self.held
        return "compute_s", self.period_s * self.held

    def spent(self, unit: str) -> float:
        """What the probe itself cost, in the budget's unit."""
        if unit == "kimg":
            return PERIODS * self.kimg
        return (self.setup_s + PERIODS * self.period_s) * self.held

    def line(self, budget: Budget) -> str:
        what = f"{self.kimg:g} kimg" if budget.unit == "kimg" else \
            f"{self.period_s:.1f} s x {self.held:g} {budget.unit.split('-')[0].upper()}"
        return (f"budget {budget}: one eval period of the sweep's config costs {what} (+ {self.setup_s:.1f} s to "
                f"start; measured on {PERIODS} periods); the probe spent {self.spent(budget.unit):.4g} {budget.unit}")


def check_unit(budget: Budget, per_trial: dict) -> None:
    """Device-seconds are counted on the device a trial holds: GPUs where it holds any."""
    gpu = per_trial.get("gpu", 0) > 0
    if budget.unit == "gpu-s" and not gpu:
        raise SweepError(f"budget {budget}: the trials hold no GPU here (no GPU in the cluster); give it in "
                         f"cpu-s, cpu-h or kimg")
    if budget.unit == "cpu-s" and gpu:
        raise SweepError(f"budget {budget}: the trials hold GPUs here, and their compute is counted in "
                         f"GPU-seconds; give it in gpu-s, gpu-h or kimg")


class _Enough(Exception):
    pass


def measure_period_cost(sweep, kind, shared: dict, per_trial: dict) -> PeriodCost:
    """The cost of `sweep`'s config, in a Ray task with `per_trial` resources (a fresh process)."""
    import ray

    remote = ray.remote(num_cpus=per_trial["cpu"], num_gpus=per_trial.get("gpu", 0))(_time_periods)
    point = sweep.warm_points[0] if sweep.warm_points else {}
    cfg = sweep.trial_config(point).replace(num_evals=PERIODS)
    held = per_trial.get("gpu", 0) or per_trial["cpu"]
    try:
        setup_s, period_s, kimg, train_s = ray.get(remote.remote(kind, sweep.trainable, cfg, shared, per_trial["cpu"]))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, SweepError):
            raise e.cause from None
        raise
    if sweep.budget.unit == "kimg" and kimg is None:
        raise SweepError(f"budget {sweep.budget}: the trainable reports no `kimg`; give the budget in gpu-s or cpu-s")
    return PeriodCost(setup_s, period_s, held, kimg, train_s)


def _time_periods(kind, train_fn, cfg, shared: dict, cpus: float) -> tuple[float, float, float | None, float | None]:
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    start, reports = time.monotonic(), []

    def report(metrics, directory) -> None:
        reports.append((time.monotonic(), metrics.get("kimg"), metrics.get(TRAIN_S)))
        if len(reports) == PERIODS:
            raise _Enough

    try:
        train_fn(cfg, report, restore_from=None, **kind.trial_kwargs(cfg, shared))
    except _Enough:
        pass
    if len(reports) < PERIODS:
        raise SweepError(f"budget: the cost probe of the sweep's config reported {len(reports)} of {PERIODS} eval "
                         f"periods (did it diverge?); the budget cannot be planned")
    (t1, kimg1, _), (t2, kimg2, train_s) = reports
    period_s = t2 - t1
    kimg = kimg2 - kimg1 if kimg1 is not None and kimg2 is not None else None
    return max(0.0, t1 - start - period_s), period_s, kimg, train_s
