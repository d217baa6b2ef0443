"""How many trials share one GPU: a trial's measured memory footprint picks the default GPU
fraction (`Resources(gpu_fraction="auto")`), and every packed trial caps its own allocator to its
share (sweeper.trial.trainable), so a plain `sweeper run` fills a GPU without trials running each other out
of memory.

The footprint is measured, not modelled: one eval period (the kind's shortened budget, see
`Kind.footprint_changes`: a few steps, one FID batch) of the real trainable, with the real shared
inputs (the dataset the trial keeps on the device, the FID extractor), in a Ray task holding a whole
GPU, read as `torch.cuda.max_memory_allocated`. It runs once per sweep, for the largest-footprint
configs (`probe_configs`), before the Tuner starts; on a CPU-only cluster nothing is measured.
On the CPU (tests, `measure_footprint` without CUDA) the same run is measured by `LiveBytes`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import weakref
from dataclasses import dataclass

import optuna
import torch
from torch.utils.weak import WeakIdKeyDictionary

from sweeper.definition.options import AUTO, FALLBACK_GPU_FRACTION
from sweeper.definition.space import DRAWS, _corner_values
from trainables.compat import DispatchMode, leaves
from trainables.config import ConfigError, field_types

GiB = 1 << 30
# The measured peak is of one config on an idle GPU; a trial needs more: allocator fragmentation
# (reserved exceeds allocated by 10-20% in a long run), and searched choices the probe does not
# take the largest of (norms, losses, optimisers: see `probe_configs`).
HEADROOM = 1.5
# Per process and outside the caching allocator (so outside both max_memory_allocated and the
# per-process cap): the CUDA context with cuBLAS/cuDNN loaded, 0.5-1 GiB on current GPUs.
CONTEXT_BYTES = 1 * GiB
# More processes than this on one GPU time-slice its SMs without adding throughput (8 eager
# processes: 27.7k img/s of DCGAN-64 on an H100 against 6.0k for one), and each needs a CPU core.
MAX_TRIALS_PER_GPU = 8
RAY_UNITS = 10_000  # Ray keeps fractional resources in units of 0.0001


@dataclass(frozen=True)
class Footprint:
    peak_bytes: int          # the probe's peak; the device's size when it ran out of memory
    device_bytes: int        # the memory of the device it ran on
    device: str              # e.g. "NVIDIA H100 80GB HBM3", "cpu"
    out_of_memory: bool = False


# --- picking the fraction -------------------------------------------------------------------------

def trials_per_gpu(peak_bytes: int, device_bytes: int) -> int:
    """How many trials of this footprint fit one device: each needs HEADROOM x its peak plus a CUDA
    context; at least 1 (one that does not fit runs alone and ends as `oom` if it must), at most
    MAX_TRIALS_PER_GPU."""
    need = HEADROOM * peak_bytes + CONTEXT_BYTES
    return max(1, min(MAX_TRIALS_PER_GPU, int(device_bytes // need)))


def gpu_fraction_for(peak_bytes: int, device_bytes: int) -> float:
    """1/k for the k trials that fit, rounded down to Ray's resource unit so that k of them fit."""
    k = trials_per_gpu(peak_bytes, device_bytes)
    return math.floor(RAY_UNITS / k) / RAY_UNITS


def memory_cap(gpu_share: float, device_bytes: int) -> float | None:
    """The argument of `torch.cuda.set_per_process_memory_fraction` for a trial holding `gpu_share`
    of a device of `device_bytes`: its share less its own CUDA context (which the cap does not
    count), never below half its share (an explicit tiny fraction). None: a whole GPU or none,
    nothing to share."""
    if not 0 < gpu_share < 1:
        return None
    share_bytes = gpu_share * device_bytes
    return float(max(share_bytes - CONTEXT_BYTES, share_bytes / 2) / device_bytes)


# --- which configs to measure ---------------------------------------------------------------------

def largest_sizes(sweep) -> dict:
    """Every integer config key the space searches (batch_size, z_dim, widths, ...), at the largest
    value the space can produce. Sizes grow memory monotonically; other searched values (norms,
    losses) do not order, and the headroom and the warm starts in `probe_configs` cover them."""
    ints = {key for key, kind in field_types(type(sweep.config)).items() if kind is int}
    if callable(sweep.space):
        highs = _define_by_run_highs(sweep.space)
    else:
        highs = {key: max(values) for key, values in
                 ((key, _corner_values(key, domain)) for key, domain in sweep.space.items())
                 if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)}
    return {key: int(value) for key, value in highs.items() if key in ints}


def _define_by_run_highs(space) -> dict:
    """The upper bound of each numeric parameter a define-by-run space suggests, over the draws
    that validation also makes (they cover its branches); from Optuna's distributions, so an
    integer range gives its bound even where no draw reached it."""
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    highs = {}
    for _ in range(DRAWS):
        trial = study.ask()
        space(trial)
        for name, dist in trial.distributions.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                numbers = [c for c in dist.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
                high = max(numbers) if len(numbers) == len(dist.choices) else None
            else:
                high = dist.high
            if high is not None:
                highs[name] = max(high, highs.get(name, high))
        study.tell(trial, 0.0)
    return highs


def probe_configs(sweep) -> list:
    """The configs whose footprint is measured: the sweep's config and each warm start (seed
    configurations often differ in architecture, e.g. DCGAN and ResNet, and fix their own batch
    size), each with the largest searched sizes; duplicates once. A combination the config refuses
    keeps the point's own sizes."""
    sizes = largest_sizes(sweep)
    configs = []
    for point in [{}, *sweep.warm_changes]:
        try:
            cfg = sweep.config.replace(**{**point, **sizes}).validate()
        except ConfigError:
            cfg = sweep.trial_config(point)
        if cfg not in configs:
            configs.append(cfg)
    return configs


# --- measuring ------------------------------------------------------------------------------------

class LiveBytes(DispatchMode):
    """The peak bytes of tensor storage alive at once, counting the tensors created while it is
    active (each storage once, however many views share it): the CPU's stand-in for
    `torch.cuda.max_memory_allocated`. Tensors made before it, and arrays a tensor only views (the
    dataset under Ray), are not counted.

    Hand-written: torch's own tracker (torch.distributed._tools.MemTracker) refuses a module that
    runs twice in one step, as D does (real and fake batches)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._count(leaf.untyped_storage())
        return out

    def _count(self, storage) -> None:
        if storage in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[storage] = nbytes
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        # A storage's Python object lives exactly as long as its memory (torch keeps them paired).
        weakref.finalize(storage, self._free, nbytes)

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes


class _OnePeriod(Exception):
    """Raised by the probe's `report`: one eval period (steps, FID, checkpoint) is enough."""


def _stop(metrics, directory) -> None:
    raise _OnePeriod


def measure_footprint(kind, train_fn, cfg, shared: dict) -> Footprint:
    """The peak memory of one eval period of `cfg` (shortened by `kind.footprint_changes`) in this
    process, the trial's arguments built here as in a trial: the caching allocator's peak on CUDA,
    `LiveBytes` on the CPU."""
    cfg = cfg.replace(num_evals=1, **kind.footprint_changes)
    cuda = torch.cuda.is_available() and getattr(cfg, "device", "auto") != "cpu"
    meter = LiveBytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out_of_memory = False
    with contextlib.nullcontext() if cuda else meter:
        try:
            train_fn(cfg, _stop, restore_from=None, **kind.trial_kwargs(cfg, shared))
        except _OnePeriod:
            pass
        except torch.OutOfMemoryError:
            out_of_memory = True
    if not cuda:
        return Footprint(meter.peak, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "cpu")
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    peak = props.total_memory if out_of_memory else torch.cuda.max_memory_allocated()
    return Footprint(peak, props.total_memory, props.name, out_of_memory)


def measure_on_gpus(sweep, kind, shared: dict) -> list[tuple[object, Footprint]]:
    """(config, footprint) of each of `probe_configs(sweep)`, each measured in a Ray task holding a
    whole GPU (a fresh process: Ray ends a GPU task's worker after one call, so nothing cached
    carries over and its memory is released)."""
    import ray

    remote = ray.remote(num_gpus=1, num_cpus=sweep.resources.cpus)(_probe)
    shared_ref = ray.put(shared)  # once, not once per config
    configs = probe_configs(sweep)
    futures = [remote.remote(kind, sweep.trainable, cfg, shared_ref, sweep.resources.cpus) for cfg in configs]
    return list(zip(configs, ray.get(futures)))


def _probe(kind, train_fn, cfg, shared: dict, cpus: float) -> Footprint:
    torch.set_num_threads(max(1, int(cpus)))
    return measure_footprint(kind, train_fn, cfg, shared)


def resolve_gpu_fraction(sweep, kind, shared: dict, available: dict):
    """The sweep with its GPU fraction decided: an explicit one as given; "auto" where the cluster
    has GPUs, from the measured footprints (the largest need on the smallest GPU wins); unchanged
    on a CPU-only cluster, where the fraction is unused. Prints one line saying what it picked."""
    if sweep.resources.gpu_fraction != AUTO or available.get("GPU", 0) == 0:
        return sweep
    import ray

    try:
        measured = measure_on_gpus(sweep, kind, shared)
    except ray.exceptions.RayTaskError as e:
        # The trials would fail the same way and say why; the sweep still starts.
        print(f"sweeper: warning: could not measure a trial's GPU memory ({str(e.cause).splitlines()[0][:200]}); "
              f"packing {round(1 / FALLBACK_GPU_FRACTION)} trials per GPU", file=sys.stderr, flush=True)
        return _with_fraction(sweep, FALLBACK_GPU_FRACTION)
    cfg, worst = min(measured, key=lambda m: gpu_fraction_for(m[1].peak_bytes, m[1].device_bytes))
    fraction = gpu_fraction_for(worst.peak_bytes, worst.device_bytes)
    print(packing_line(worst, fraction, len(measured)), flush=True)
    if worst.out_of_memory:
        print(f"sweeper: warning: a trial of the largest searched sizes ran out of memory alone on a {worst.device}: "
              f"lower batch_size or the searched sizes", file=sys.stderr, flush=True)
    return _with_fraction(sweep, fraction)


def packing_line(footprint: Footprint, fraction: float, n_configs: int) -> str:
    k = trials_per_gpu(footprint.peak_bytes, footprint.device_bytes)
    return (f"GPU packing: {k} trial(s) per GPU (gpu_fraction {fraction:g}): the largest of {n_configs} measured "
            f"config(s) peaks at {footprint.peak_bytes / GiB:.2f} GiB on {footprint.device} "
            f"({footprint.device_bytes / GiB:.0f} GiB; x{HEADROOM} + {CONTEXT_BYTES / GiB:g} GiB CUDA context per "
            f"trial); Resources(gpu_fraction=...) overrides")


def _with_fraction(sweep, fraction: float):
    return sweep.with_(resources=dataclasses.replace(sweep.resources, gpu_fraction=fraction))
