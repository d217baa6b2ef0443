"""The Ray adapter around a Ray-free training loop: config in, `tune.report` + MLflow out."""
import gc
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray import tune

from sweeper.definition import GENERATION_KEY, without_generation
from sweeper.search.cost import TRAIN_COMPUTE_S
from sweeper.search.footprint import memory_cap
from sweeper.tracking.outcomes import OOM, REPLACED, end_run
from sweeper.tracking.runs import PARENT_TAG, TRIAL_TAG, generation_run_id, trial_run_id
from sweeper.trial.delivery import RunLog, retrying, trial_spool
from sweeper.trial.ledger import Ledger
from sweeper.trial.lineage import Lineage, clone_tags, continued, read_lineage, write_lineage
from sweeper.trial.system import TrialUsage, stop_leftover_monitor
from trainables.training.checkpoint import GRID_FILE


def run_trial(sampled: dict, *, kind, train_fn, base, shared: dict, tracking, cpus: float,
              metric: str, mode: str, population: tuple = ()) -> None:
    """Ray Tune function trainable; `tune.with_parameters` supplies everything after `sampled`.
    `train_fn(cfg, report, restore_from=..., **kind.trial_kwargs(cfg, shared))` trains.
    `population`: the keys a PBT/PB2 sweep mutates (empty for any other sweep)."""
    started = time.monotonic()  # this process's share of the trial's compute_s starts here
    # Tune runs the next trial in the process the last one ended in (reuse_actors): what a stopped
    # or failed one held (its frames lived on in its exception until then) is freed first, and
    # its system-metrics monitor stopped (where its function did not unwind).
    stop_leftover_monitor()
    _free_the_device()
    generation = int(sampled.get(GENERATION_KEY, 0))
    cfg = base.replace(**without_generation(sampled)).validate()
    _share_the_machine(cfg, cpus)
    member = Member(population, generation) if population else None
    _train_and_log(cfg, kind=kind, train_fn=train_fn, shared=shared, tracking=tracking,
                   metric=metric, mode=mode, started=started, member=member)
    _free_the_device()  # a process Tune keeps for a later trial holds none of it meanwhile


@dataclass(frozen=True)
class Member:
    """A trial of a population (PBT, PB2): the keys its sweep mutates and its generation."""
    mutated: tuple
    generation: int


def _train_and_log(cfg, *, kind, train_fn, shared: dict, tracking, metric: str, mode: str, started: float,
                   member: Member | None = None) -> None:
    last = {"eval_period": 0}
    checkpoint = tune.get_checkpoint()  # one left, where Tune named a deleted one (sweeper.trial.checkpoints)
    with (checkpoint.as_directory() if checkpoint else nullcontext()) as restore_from:
        trial_id = tune.get_context().get_trial_id()
        origin = read_lineage(restore_from) if member else None
        cloned = origin is not None and origin.donor_of(trial_id) is not None
        run_log = _open_run_log(tracking, kind.run_params(cfg), member, origin)
        ledger = Ledger(metric, mode, _devices_held(), restore_from, since=started)
        if cloned:  # the donor's model and best, but this member's own spending so far
            ledger.spent_as(**retrying(lambda: _spent_so_far(tracking, trial_id), "read the member's spending"))
        # A member's mutated values, also as per-period metrics: its schedule, drawn by the UI.
        mutated = {key: getattr(cfg, key) for key in member.mutated} if member else {}
        segments = continued(origin, trial_id=trial_id, run_id=run_log.run_id, generation=member.generation,
                             values=mutated) if member else ()
        if restore_from and not cloned:  # a donor's undelivered periods are its own run's
            run_log.adopt(restore_from)
        # Its peak memory from here; system metrics until the trial's function ends (returns or
        # raises: a trial the scheduler stops raises SystemExit in its report call).
        with TrialUsage(tracking.uri, run_log.run_id) as usage:
            def report(metrics: dict, directory) -> None:
                metrics = ledger.add({**metrics, **mutated, **usage.at_eval_period(mlflow_reachable=run_log.failures == 0)})
                last["eval_period"] = int(metrics["eval_period"])
                run_log.log(metrics, Path(directory) / GRID_FILE if directory else None)
                if directory:
                    run_log.keep_pending_in(directory)
                    ledger.save_in(directory)
                    if member:
                        write_lineage(directory, Lineage(last["eval_period"], segments))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)

            try:
                train_fn(cfg, report, restore_from=restore_from, **kind.trial_kwargs(cfg, shared))
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


def _open_run_log(tracking, params: dict, member: Member | None = None, origin: Lineage | None = None) -> RunLog:
    """The trial's MLflow run (created, or found again on a retry) and its delivery spool. A
    population member's is its generation's; one that replaces an earlier generation's run first
    delivers what that run's periods left in the spool, then ends it (sweeper.trial.lineage)."""
    context = tune.get_context()
    trial_id, spool = context.get_trial_id(), trial_spool(context.get_experiment_name(), context.get_trial_id())
    if member is None:
        run_id = retrying(lambda: trial_run_id(tracking, trial_id, context.get_trial_name(), params),
                          "open the trial's MLflow run")
    else:
        donor = origin.donor_of(trial_id) if origin else None
        run_id, earlier = retrying(lambda: generation_run_id(
            tracking, trial_id, context.get_trial_name(), params, member.generation,
            clone_tags(donor, origin.eval_period if donor else None)), "open the member's MLflow run")
        for replaced in earlier:
            RunLog(tracking, replaced, spool).flush(wait=True)
            retrying(lambda run=replaced: end_run(tracking.client(), run, REPLACED), "end the replaced run")
    # Which machine a trial ran on (the latest node, when a retry moved it), for debugging a cluster sweep.
    retrying(lambda: tracking.client().set_tag(run_id, "sweeper.node_id", ray.get_runtime_context().get_node_id()),
             "tag the trial's node")
    # Not in the trial's folder: Tune copies that to storage while the spool's files come and go.
    return RunLog(tracking, run_id, spool)


def _spent_so_far(tracking, trial_id: str) -> dict:
    """What a member had spent when it took another's checkpoint: the last report of its latest run
    (its previous generation's; zero where it logged none yet). The donor's checkpoint carries the
    donor's spending, which the budget already counts."""
    runs = tracking.client().search_runs(
        [tracking.experiment_id], max_results=2, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{tracking.parent_run_id}'")
    metrics = next((r.data.metrics for r in runs if "compute_s" in r.data.metrics), {})
    return {"compute_s": metrics.get("compute_s", 0.0), "train_compute_s": metrics.get(TRAIN_COMPUTE_S, 0.0)}


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
