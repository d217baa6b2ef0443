"""What a trial's process uses, on the trial's MLflow run: MLflow's system metrics, and the
process's own peak memory during the trial.

System metrics are MLflow's own monitor (`mlflow.system_metrics`: CPU and memory of the machine,
disk and network, and with nvidia-ml-py each NVIDIA GPU's utilisation, memory and power, as
`system/...` metrics), one per trial, sampled every $SWEEPER_SYSTEM_METRICS_S seconds (default
10; 0: off). It logs to MLflow directly, not through the trial's spool: a sample is a measurement
of a moment, not a step that must arrive. Its metric names carry no node (MLflow's `node_id` would
put the node's id into every name, so trials on two nodes could not share a chart); the run's
`sweeper.node_id` tag says which node the trial ran on.

The monitor lives as long as its trial and never holds it up:
- It is stopped when the trial's function ends, returns or raises (a trial the scheduler stops
  raises SystemExit inside its report call), and any monitor a trial left is stopped when the
  next trial starts in the process (Tune reuses it). MLflow's monitor also ends itself once the
  run is no longer RUNNING: the driver ends each run as its trial ends.
- Stopping waits at most STOP_WAIT_S for it: during an outage its last call to the server may
  take the client's whole timeout. Once told to stop it logs nothing more.
- A call to MLflow that fails ends MLflow's monitor (it logs a warning): an outage would end the
  trial's system metrics for good. So at each eval period that the trial's spool delivered (the
  server answers), a monitor that has ended is started again, going on from its last step.

Peak memory, reported with each eval period through the spool (exactly once, like the trial's
other metrics): `peak_rss_mib`, the most resident memory the trial's process held since the trial
started (the whole process: Ray's worker and the trial's threads), and on a GPU `peak_cuda_mib`,
the most memory PyTorch's allocator handed out on the trial's device since then. Per trial,
though the process is reused: Linux's peak (VmHWM) is reset through /proc/self/clear_refs at the
trial's start (any user may, for its own process), CUDA's through torch.cuda.reset_peak_memory_stats.
Where the reset is refused (not Linux, a kernel before 4.0), getrusage's process-wide peak stands
in for the first trial of a process only: a later trial's would be the peak of every trial before.
"""
from __future__ import annotations

import logging
import math
import os
import resource
import sys
import threading

import torch

from sweeper.compat import monitor_running
from trainables.errors import BadInput

log = logging.getLogger("sweeper")

INTERVAL_ENV = "SWEEPER_SYSTEM_METRICS_S"
DEFAULT_INTERVAL_S = 10.0
STOP_WAIT_S = 5.0
PEAK_RSS, PEAK_CUDA = "peak_rss_mib", "peak_cuda_mib"
MIB = 2 ** 20

_monitoring: SystemMetrics | None = None  # this process's: one trial at a time
_trials_started = 0  # in this process (the fallback peak is valid for the first one only)


def sampling_interval(environ=os.environ) -> float:
    """Seconds between system-metric samples: $SWEEPER_SYSTEM_METRICS_S, default 10, 0 = off."""
    raw = environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise BadInput(f"{INTERVAL_ENV}={raw!r}: not a number of seconds >= 0 (0 turns system metrics off)")
    return seconds


class SystemMetrics:
    """MLflow's system-metrics monitor on one run; at most one running in a process."""

    def __init__(self, tracking_uri: str, run_id: str, interval_s: float):
        self.tracking_uri, self.run_id, self.interval_s = tracking_uri, run_id, interval_s
        self.monitor = None

    def start(self) -> None:
        global _monitoring
        stop_leftover_monitor()
        # MLflow says at INFO that it starts and stops, and that it skips GPUs: a line per trial.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        try:
            # resume_logging: the steps go on from the run's last sample (a retried trial, a restart).
            self.monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.interval_s,
                                                resume_logging=True, tracking_uri=self.tracking_uri)
            self.monitor.start()
        except Exception as e:  # noqa: BLE001 - the trial goes on without system metrics
            log.warning("system metrics not monitored (%s)", str(e).splitlines()[0][:120] if str(e) else e)
            self.monitor = None
            return
        _monitoring = self

    def keep_alive(self, mlflow_reachable: bool) -> None:
        """Start the monitor again where a failed call to MLflow ended it, once MLflow answers."""
        if mlflow_reachable and self.monitor is not None and not self._running():
            self.start()

    def stop(self) -> None:
        global _monitoring
        if _monitoring is self:
            _monitoring = None
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        # finish() joins the monitor's thread with no timeout: in a thread of its own, waited for
        # at most STOP_WAIT_S. The monitor logs nothing once finish() has told it to stop.
        finisher = threading.Thread(target=monitor.finish, daemon=True, name="stop-system-metrics")
        finisher.start()
        finisher.join(STOP_WAIT_S)

    def _running(self) -> bool:
        return monitor_running(self.monitor)


def stop_leftover_monitor() -> None:
    """Stop the monitor a trial left running in this process (it ended without unwinding)."""
    if _monitoring is not None:
        _monitoring.stop()


class PeakMemory:
    """The trial process's peak resident memory, and its peak CUDA memory, since the trial started."""

    def __init__(self):
        global _trials_started
        _trials_started += 1
        self.first_in_process = _trials_started == 1
        self.resettable = _reset_peak_rss()
        self.highest = 0.0
        # Only where this process uses CUDA already: the first CUDA call would create a context.
        # Where CUDA starts later in the trial, its peak counts from then: from this trial too.
        if torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()

    def read(self) -> dict:
        """{peak_rss_mib, peak_cuda_mib}: what is known of them (see the module's docstring)."""
        peaks = {}
        rss = _peak_rss_mib() if self.resettable else (_process_peak_rss_mib() if self.first_in_process else None)
        if rss is not None:
            # Linux counts resident pages per CPU and sums them roughly: a peak read later can be a
            # few pages lower. The peak so far never goes down.
            self.highest = max(self.highest, rss)
            peaks[PEAK_RSS] = self.highest
        if torch.cuda.is_initialized():
            peaks[PEAK_CUDA] = torch.cuda.max_memory_allocated() / MIB
        return peaks


def _reset_peak_rss() -> bool:
    """Linux's peak resident set size of this process (VmHWM) set to its current size; False where
    refused (no /proc, a kernel before 4.0 or one that refuses it)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _peak_rss_mib() is not None


def _peak_rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MIB  # in kB
    except OSError:
        pass
    return None


def _process_peak_rss_mib() -> float:
    """getrusage's peak of the whole process's life (never reset)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB  # bytes on macOS, KiB elsewhere


class TrialUsage:
    """A trial's usage, from its start to its end (a context manager): the peaks reset and the
    system-metrics monitor started on entering, the monitor stopped on leaving."""

    def __init__(self, tracking_uri: str, run_id: str, interval_s: float | None = None):
        interval_s = sampling_interval() if interval_s is None else interval_s
        self.peak_memory = PeakMemory()
        self.system = SystemMetrics(tracking_uri, run_id, interval_s) if interval_s > 0 else None

    def __enter__(self) -> TrialUsage:
        if self.system is not None:
            self.system.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.system is not None:
            self.system.stop()

    def at_eval_period(self, mlflow_reachable: bool) -> dict:
        """The peaks so far, as metrics; a monitor an outage ended, started again."""
        if self.system is not None:
            self.system.keep_alive(mlflow_reachable)
        return self.peak_memory.read()
