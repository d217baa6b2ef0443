"""Each trial's MLflow run ends when its trial does, not when the sweep does.

The trial process cannot end its own run: a trial the scheduler stops never returns from its
function. So the driver does, from Tune's trial-end hooks. The calls go through one background
thread: MLflow's client retries a failed call for minutes, and Tune's loop must not wait through an
outage. A call that fails is dropped: `close_trial_runs` ends every run that is still RUNNING when
the trials are over, with its outcome.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

from ray.tune import Callback

from sweeper.tracking.runs import Tracking, end_trial_run

log = logging.getLogger("sweeper")


class EndTrialRuns(Callback):
    DRAIN_S = 30.0  # at the end of the trials, how long the last ends may take before the driver goes on

    def __init__(self, tracking: Tracking):
        self.tracking = tracking
        self._queue: queue.Queue | None = None

    def __getstate__(self):  # Tune saves its callbacks with the experiment; the thread is this process's
        return {"tracking": self.tracking, "_queue": None}

    def on_trial_complete(self, iteration: int, trials: list, trial, **info):
        self._end(trial.trial_id, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info):
        self._end(trial.trial_id, failed=True)

    def on_experiment_end(self, trials: list, **info):
        if self._queue is None:
            return
        deadline = time.monotonic() + self.DRAIN_S
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)

    def _end(self, trial_id: str, failed: bool) -> None:
        if self._queue is None:
            self._queue = queue.Queue()
            threading.Thread(target=self._work, args=(self._queue,), daemon=True, name="end-trial-runs").start()
        self._queue.put((trial_id, failed))

    def _work(self, jobs: queue.Queue) -> None:
        while True:
            trial_id, failed = jobs.get()
            try:
                end_trial_run(self.tracking, trial_id, failed)
            except Exception as e:  # noqa: BLE001 - the sweep's end closes it (close_trial_runs)
                log.debug("could not end trial %s's run now (%s)", trial_id, e)
            finally:
                jobs.task_done()
