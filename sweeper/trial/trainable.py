"""The Ray adapter around a Ray-free training loop: config in, `tune.report` + MLflow out."""
import gc
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import ray
import torch
from ray import tune

from sweeper.search.footprint import memory_cap
from sweeper.tracking.outcomes import OOM
from sweeper.tracking.runs import trial_run_id
from sweeper.trial.delivery import RunLog, retrying, trial_spool
from sweeper.trial.ledger import Ledger
from sweeper.trial.system import TrialUsage, stop_leftover_monitor
from trainables.training.checkpoint import GRID_FILE


def run_trial(sampled: dict, *, kind, train_fn, base, shared: dict, tracking, cpus: float,
              metric: str, mode: str) -> None:
    """Ray Tune function trainable; `tune.with_parameters` supplies everything after `sampled`.
    `train_fn(cfg, report, restore_from=..., **kind.trial_kwargs(cfg, shared))` trains."""
    started = time.monotonic()  # this process's share of the trial's compute_s starts here
    # Tune runs the next trial in the process the last one ended in (reuse_actors): what a stopped
    # or failed one held (its frames lived on in its exception until then) is freed first, and
    # its system-metrics monitor stopped (where its function did not unwind).
    stop_leftover_monitor()
    _free_the_device()
    cfg = base.replace(**sampled).validate()
    _share_the_machine(cfg, cpus)
    _train_and_log(cfg, kind=kind, train_fn=train_fn, shared=shared, tracking=tracking,
                   metric=metric, mode=mode, started=started)
    _free_the_device()  # a process Tune keeps for a later trial holds none of it meanwhile


def _train_and_log(cfg, *, kind, train_fn, shared: dict, tracking, metric: str, mode: str, started: float) -> None:
    run_log = _open_run_log(tracking, kind.run_params(cfg))
    last = {"eval_period": 0}
    checkpoint = tune.get_checkpoint()  # one left, where Tune named a deleted one (sweeper.trial.checkpoints)
    # Its peak memory from here; system metrics until the trial's function ends (returns or raises:
    # a trial the scheduler stops raises SystemExit in its report call).
    with (TrialUsage(tracking.uri, run_log.run_id) as usage,
          (checkpoint.as_directory() if checkpoint else nullcontext()) as restore_from):
        ledger = Ledger(metric, mode, _devices_held(), restore_from, since=started)

        def report(metrics: dict, directory) -> None:
            metrics = ledger.add({**metrics, **usage.at_eval_period(mlflow_reachable=run_log.failures == 0)})
            last["eval_period"] = int(metrics["eval_period"])
            run_log.log(metrics, Path(directory) / GRID_FILE if directory else None)
            if directory:
                run_log.keep_pending_in(directory)
                ledger.save_in(directory)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)

        kwargs = kind.trial_kwargs(cfg, shared)
        if restore_from:
            run_log.adopt(restore_from)
        try:
            train_fn(cfg, report, restore_from=restore_from, **kwargs)
        except torch.OutOfMemoryError as e:
            # Retrying the same config on the same share of the GPU would run out again: the trial
            # ends here as `oom` (searcher: FAILED), and the sweep goes on.
            hint = _oom_hint(cfg, e)
            retrying(lambda: tracking.client().set_tag(run_log.run_id, "sweeper.oom", hint), "tag the OOM")
            worst = math.inf if mode == "min" else -math.inf
            tune.report(ledger.add({metric: worst, "eval_period": last["eval_period"], OOM: True}))
        except Exception:
            # One try, no wait: the trial is failing. What the server does not take now stays in
            # the spool for a retry, or for the driver once the trial has ended
            # (sweeper.trial.leftovers).
            run_log.flush()
            raise
    run_log.flush(wait=True)


def _free_the_device() -> None:
    """What a finished trial held on its GPU goes back to the device, not to this process's cache,
    so a trial packed beside it (or the next one in this process, under its own cap) has it."""
    gc.collect()  # the trial's models and optimizers, now unreferenced (and any cycles through them)
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _share_the_machine(cfg, cpus: float) -> None:
    """This process's settings for a machine it shares with other trials (and with MLflow outages)."""
    torch.set_num_threads(max(1, int(cpus)))  # several trials share a machine; don't oversubscribe
    cap_gpu_memory(cfg)
    # Ray Train logs every checkpoint's full path, and Tune every resumption's (in a process a
    # trial already set up: Tune reuses it); the console has a line per trial already.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune.trainable.trainable").setLevel(logging.WARNING)
    # MLflow's client retries one failed call for minutes, which would stall training through an
    # outage; here a failed call fails fast and RunLog retries it between eval periods.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "20"


def _open_run_log(tracking, params: dict) -> RunLog:
    """The trial's MLflow run (created, or found again on a retry) and its delivery spool."""
    context = tune.get_context()
    run_id = retrying(lambda: trial_run_id(tracking, context.get_trial_id(), context.get_trial_name(), params),
                      "open the trial's MLflow run")
    # Which machine a trial ran on (the latest node, when a retry moved it), for debugging a cluster sweep.
    retrying(lambda: tracking.client().set_tag(run_id, "sweeper.node_id", ray.get_runtime_context().get_node_id()),
             "tag the trial's node")
    # Not in the trial's folder: Tune copies that to storage while the spool's files come and go.
    return RunLog(tracking, run_id, trial_spool(context.get_experiment_name(), context.get_trial_id()))


def _devices_held() -> float:
    """What `compute_s` counts per wall second: this trial's GPUs where it holds any, else its CPUs."""
    held = tune.get_context().get_trial_resources().required_resources
    return float(held.get("GPU", 0) or held.get("CPU", 1))


def gpu_share() -> float:
    """This trial's fraction of a GPU (its Tune resources); 0 without one."""
    return float(tune.get_context().get_trial_resources().required_resources.get("GPU", 0))


def cap_gpu_memory(cfg) -> float | None:
    """Trials packed on one GPU each cap their own allocator to their share (less their CUDA
    context), so a trial that outgrows it runs out of memory itself (and ends as `oom`) instead of
    starving its neighbours. Returns the cap set, None where there is nothing to cap."""
    if getattr(cfg, "device", "auto") == "cpu" or not torch.cuda.is_available():
        return None
    device = torch.device("cuda", torch.cuda.current_device())
    cap = memory_cap(gpu_share(), torch.cuda.get_device_properties(device).total_memory)
    if cap is not None:
        torch.cuda.set_per_process_memory_fraction(cap, device)
    return cap


def _oom_hint(cfg, error: Exception) -> str:
    share = gpu_share()
    return (f"out of GPU memory at batch_size={getattr(cfg, 'batch_size', '?')}, gpu_fraction={share}: lower "
            f"batch_size or raise Sweep(resources=Resources(gpu_fraction=...)) ({str(error).splitlines()[0][:160]})")
