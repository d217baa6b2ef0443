"""A sweep's compute budget (`--budget`, `Sweep(budget=...)`): pure data, no Ray, MLflow or torch.

Three units: device-seconds of GPU (`gpu-s`) or CPU (`cpu-s`), i.e. wall time x the GPUs or CPUs a
trial holds (a trial on a quarter GPU for an hour spends 900 gpu-s), and thousands of training
images shown (`kimg`). Minutes and hours are stored as seconds, so two budgets in one unit compare.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sweeper.definition.options import SweepError

UNITS = ("gpu-s", "cpu-s", "kimg")
_SECONDS = {"s": 1, "min": 60, "h": 3600}
FORMS = "a number > 0 and a unit, e.g. 2gpu-h, 0.5gpu-h, 600cpu-s, 10cpu-min or 5000kimg " \
        "(units: gpu-s, gpu-min, gpu-h, cpu-s, cpu-min, cpu-h, kimg)"
_TEXT = re.compile(r"(?P<amount>\d+(?:\.\d*)?|\.\d+)\s*(?:(?P<device>gpu|cpu)-(?P<per>s|min|h)|(?P<kimg>kimg))")


@dataclass(frozen=True)
class Budget:
    amount: float  # in `unit`
    unit: str      # "gpu-s", "cpu-s" or "kimg"

    def __post_init__(self):
        if self.unit not in UNITS:
            raise SweepError(f"budget: unit {self.unit!r} is not one of {', '.join(UNITS)}")
        number = isinstance(self.amount, (int, float)) and not isinstance(self.amount, bool)
        if not (number and math.isfinite(self.amount) and self.amount > 0):
            raise SweepError(f"budget: amount must be a finite number > 0, got {self.amount!r}")

    def __str__(self) -> str:
        return f"{self.amount:g}{self.unit}"


def parse_budget(text: str) -> Budget:
    """`2gpu-h` -> Budget(7200, "gpu-s"); `10cpu-min` -> Budget(600, "cpu-s"); `5000kimg` -> Budget(5000, "kimg")."""
    match = _TEXT.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    amount = float(match["amount"]) if match else 0.0
    if amount <= 0:
        raise SweepError(f"--budget {text!r}: expected {FORMS}")
    if match["kimg"]:
        return Budget(amount, "kimg")
    return Budget(amount * _SECONDS[match["per"]], f"{match['device']}-s")
