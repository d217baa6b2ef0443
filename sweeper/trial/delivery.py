"""A trial's eval periods delivered to its MLflow run exactly once, through retries and outages.

Each eval period (a step: its metrics and sample grid) is first written to a spool on the
trial's local disk, then delivered. A delivery that fails (server down, sqlite locked) leaves the
step spooled; training goes on, and later reports retry with exponential backoff, oldest step
first. Only when the spool holds `max_pending` steps does the trial wait for the server, so the
spool stays bounded and nothing is dropped.

Exactly once: a step is "delivered" when its metrics are in the run. The grid goes first and the
metrics last, so a step whose metrics arrived has its grid too. On start (a retry or a resume
from a checkpoint older than what was logged) and after any failed delivery (the server may have
applied a request whose answer was lost) the last delivered step is read back from the run, and
steps up to it are never sent again. Hand-written: MLflow's client has no offline buffer.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import PIL.Image
from mlflow.entities import Metric

from sweeper.tracking.runs import STEP_METRIC, Tracking
from trainables.cache import write_atomic

log = logging.getLogger("sweeper")

SPOOL_IN_CHECKPOINT = "mlflow_spool"
IMAGE_KEY = "samples"  # the sample grid, as an MLflow image  # logged at every step; its history says which steps arrived
MAX_BACKOFF_S = 60.0


class RunLog:
    def __init__(self, tracking: Tracking, run_id: str, spool: Path, *, max_pending: int = 256):
        self.tracking, self.run_id, self.spool, self.max_pending = tracking, run_id, Path(spool), max_pending
        self.spool.mkdir(parents=True, exist_ok=True)
        self.failures, self.next_try = 0, 0.0
        # After a start (a predecessor may have died mid-delivery) or a failure: check the run before
        # sending what might be there already.
        self.unsure = True
        self.delivered = self._last_delivered_step(wait=True)

    def log(self, metrics: dict, grid_png: Path | None = None) -> None:
        """Spool one eval period (metrics with `eval_period` = the step) and try to deliver."""
        step = int(metrics[STEP_METRIC])
        if step <= self.delivered or (self.spool / f"{step:06d}.json").exists():
            return  # a retried trial re-running a period it already logged
        if grid_png is not None and Path(grid_png).exists():
            shutil.copyfile(grid_png, self.spool / f"{step:06d}.png")
        write_atomic(self.spool / f"{step:06d}.json", json.dumps(metrics).encode())  # Infinity/NaN round-trip
        self.flush()
        while len(self.pending()) >= self.max_pending:  # bounded: wait for the server instead of dropping
            time.sleep(max(0.0, self.next_try - time.monotonic()))
            self.flush()

    def pending(self) -> list[int]:
        return sorted(int(p.stem) for p in self.spool.glob("*.json"))

    def flush(self, *, wait: bool = False, timeout_s: float = 600.0) -> bool:
        """Deliver the spooled steps, oldest first; True when none is left. `wait`: keep retrying
        (with backoff) until delivered or `timeout_s` passed, e.g. when the trial ends."""
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() >= self.next_try:
                self._deliver_pending()
            if not self.pending() or not wait or time.monotonic() >= deadline:
                return not self.pending()
            time.sleep(max(0.05, min(self.next_try - time.monotonic(), deadline - time.monotonic())))

    def _deliver_pending(self) -> None:
        try:
            if self.unsure:
                self.delivered = max(self.delivered, self._last_delivered_step())
            for step in self.pending():
                if step > self.delivered:
                    self._deliver(step)
                self.delivered = max(self.delivered, step)
                (self.spool / f"{step:06d}.json").unlink()
                (self.spool / f"{step:06d}.png").unlink(missing_ok=True)
        except Exception as e:  # any failure to reach the store: keep the step, retry later
            self.failures, self.unsure = self.failures + 1, True
            self.next_try = time.monotonic() + min(MAX_BACKOFF_S, 2.0 ** min(self.failures, 6))
            if self.failures == 1:
                log.warning("MLflow unreachable (%s); spooling eval periods in %s and retrying",
                            str(e).splitlines()[0][:120] if str(e) else type(e).__name__, self.spool)
            return
        if self.failures:
            log.warning("MLflow reachable again: spooled eval periods delivered")
        self.failures, self.unsure = 0, False

    def _deliver(self, step: int) -> None:
        client = self.tracking.client()
        grid = self.spool / f"{step:06d}.png"
        if grid.exists():
            # Twice: under a stable name (grids/eval_NNNN.png, for people and the sweep's summary)
            # and as an MLflow image at its step, which the UI's image grid compares across trials.
            named = self.spool / "upload" / f"eval_{step:04d}.png"
            named.parent.mkdir(exist_ok=True)
            shutil.copyfile(grid, named)
            client.log_artifact(self.run_id, str(named), artifact_path="grids")
            if not (self.unsure and self._image_logged(client, step)):  # each image uploads anew
                with PIL.Image.open(grid) as image:
                    client.log_image(self.run_id, image.convert("RGB"), key=IMAGE_KEY, step=step)
        metrics = json.loads((self.spool / f"{step:06d}.json").read_text())
        now = int(time.time() * 1000)
        client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in _loggable(metrics).items()])

    def _image_logged(self, client, step: int) -> bool:
        return any(f"{IMAGE_KEY}+step+{step}+" in a.path for a in client.list_artifacts(self.run_id, "images"))

    def _last_delivered_step(self, *, wait: bool = False) -> int:
        def read() -> int:
            history = self.tracking.client().get_metric_history(self.run_id, STEP_METRIC)
            return max((int(m.step) for m in history), default=0)
        return retrying(read, "read the trial's last logged eval period") if wait else read()

    def keep_pending_in(self, directory: Path) -> None:
        """Copy the undelivered steps into a checkpoint, so that a retry elsewhere or the driver
        (for a trial ASHA stopped) can still deliver them."""
        files = [p for p in self.spool.iterdir() if p.is_file() and p.suffix in (".json", ".png")]
        if files:
            (Path(directory) / SPOOL_IN_CHECKPOINT).mkdir(exist_ok=True)
            for path in files:
                shutil.copyfile(path, Path(directory) / SPOOL_IN_CHECKPOINT / path.name)

    def adopt(self, directory: Path) -> None:
        """Take over the undelivered steps a checkpoint carries (see keep_pending_in)."""
        carried = Path(directory) / SPOOL_IN_CHECKPOINT
        for path in sorted(carried.glob("*.json")) if carried.is_dir() else ():
            if int(path.stem) > self.delivered and not (self.spool / path.name).exists():
                png = path.with_suffix(".png")
                if png.exists():
                    shutil.copyfile(png, self.spool / png.name)
                shutil.copyfile(path, self.spool / path.name)


def _loggable(metrics: dict) -> dict:
    """What goes into MLflow: finite numbers only. An infinite FID would be stored as 1.8e308 and
    flatten every chart; a diverged trial gets `diverged_at_period` instead (and its outcome tag)."""
    kept = {k: v for k, v in metrics.items() if math.isfinite(float(v))}
    if metrics.get("diverged"):
        kept["diverged_at_period"] = metrics[STEP_METRIC]
    return kept


def retrying(call, what: str, *, timeout_s: float = 600.0):
    """`call()`, retried with backoff while the tracking store is unreachable (up to `timeout_s`)."""
    deadline, attempt = time.monotonic() + timeout_s, 0
    while True:
        try:
            return call()
        except Exception as e:
            if time.monotonic() >= deadline:
                raise
            attempt += 1
            if attempt == 1:
                log.warning("MLflow unreachable, retrying to %s: %s", what, str(e).splitlines()[0][:120] if str(e) else e)
            time.sleep(min(MAX_BACKOFF_S, 2.0 ** min(attempt, 6)))

