"""The arithmetic a feature extractor runs in: a setting, because the fastest precision that keeps
FID within 0.1% of fp32 can only be measured on a GPU (`python bench/fid_speed.py --gpu` prints
each one's speed and FID difference), and until it is, the default is plain fp32.

  fp32                 float32 with TF32 off (cuDNN convolutions default to TF32 on Ampere and
                       later, which is not fp32 numerics)
  tf32                 float32 tensors, TF32 tensor-core convolutions and matmuls
  bf16                 autocast to bfloat16
  bf16-channels-last   bf16 with the network in channels-last memory layout (faster convs on
                       tensor cores)

Chosen by `SWEEPER_FID_PRECISION` (or per extractor). TF32 is a CUDA notion: on a CPU, tf32 runs as
fp32; bf16 autocast works on a CPU too, though slowly without native bf16 instructions.
"""
from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = ("fp32", "tf32", "bf16", "bf16-channels-last")
DEFAULT_PRECISION = "fp32"
ENV_VAR = "SWEEPER_FID_PRECISION"


def fid_precision(value: str | None = None) -> str:
    """`value`, else $SWEEPER_FID_PRECISION, else fp32; an unknown name is a ValueError naming it."""
    chosen = value or os.environ.get(ENV_VAR) or DEFAULT_PRECISION
    if chosen not in PRECISIONS:
        source = "precision" if value else ENV_VAR
        raise ValueError(f"{source}={chosen!r} is not a FID precision; choose one of {', '.join(PRECISIONS)}")
    return chosen


def channels_last(precision: str) -> bool:
    return precision == "bf16-channels-last"


@contextlib.contextmanager
def numerics(device: torch.device, precision: str):
    """Run the extractor's forward pass in `precision` on `device`, restoring the caller's flags after:
    the TF32 switches are process-wide, and the training step between evals sets its own."""
    with contextlib.ExitStack() as stack:
        if device.type == "cuda" and precision in ("fp32", "tf32"):
            stack.enter_context(_tf32(precision == "tf32"))
        if precision.startswith("bf16"):
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        yield


@contextlib.contextmanager
def _tf32(enabled: bool):
    # The per-operator fp32_precision API: mixing it with the legacy `allow_tf32` switches makes
    # torch refuse to answer legacy queries, so both are restored to exactly what they were.
    wanted = "tf32" if enabled else "ieee"
    switches = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    before = [switch.fp32_precision for switch in switches]
    try:
        for switch in switches:
            switch.fp32_precision = wanted
        yield
    finally:
        for switch, value in zip(switches, before):
            switch.fp32_precision = value
