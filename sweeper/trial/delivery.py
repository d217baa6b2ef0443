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

The spool is private: `<tmp>/sweeper-spool-<uid>/<experiment>/<trial id>`, its root made mode 0700
and refused when another user owns it or it is a symlink (recreated when it is ours with wider
permissions: someone else may have written into it). Every spool file is read through `O_NOFOLLOW`
and must be a regular file of this user; a planted symlink, FIFO or foreign file is left
undelivered and removed, and names other than `NNNNNN.json` / `.png` are never read. So nothing a
second user of the machine writes reaches a run as metrics.

What a trial cannot deliver before it ends (stopped by the scheduler, paused for good, failed,
while MLflow was down) stays in its spool and its latest checkpoint; the driver delivers it when
the sweep's trials have ended (sweeper.trial.leftovers).
"""
from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
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
SPOOLED = re.compile(r"(\d{6,})\.json")  # a step's metrics; its grid is the same name with .png


class SpoolError(Exception):
    """A spool path that is not private to this user: refused, never read or written."""


def spool_root(base: str | Path | None = None) -> Path:
    """This user's private spool root, `<base>/sweeper-spool-<uid>` (base: the temp dir), mode 0700.

    Refused (SpoolError) where it is a symlink, not a folder, or another user's: in a shared /tmp
    (sticky) it cannot be taken back, and files in it could be anyone's. Ours with wider
    permissions: removed and made anew, since anything in it may have been planted."""
    root = Path(base or tempfile.gettempdir()) / f"sweeper-spool-{os.getuid()}"
    try:
        root.mkdir(mode=0o700)
    except FileExistsError:
        info = os.lstat(root)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise SpoolError(f"{root}: not a folder (a symlink or a file); remove it") from None
        if info.st_uid != os.getuid():
            raise SpoolError(f"{root}: owned by uid {info.st_uid}, not by this user ({os.getuid()}); "
                             f"remove it or set TMPDIR") from None
        if info.st_mode & 0o077:
            log.warning("%s: mode %o lets other users write into it; made anew (mode 700)",
                        root, stat.S_IMODE(info.st_mode))
            shutil.rmtree(root)
            root.mkdir(mode=0o700)
    os.chmod(root, 0o700)  # mkdir's mode is masked by the umask: make it exactly 0700
    return root


def trial_spool(experiment: str, trial_id: str, base: str | Path | None = None) -> Path:
    """Where a trial of a Tune experiment spools its eval periods, on the machine it runs on."""
    return spool_root(base) / experiment / trial_id


def read_spooled(path: Path, *, check_owner: bool = True) -> bytes | None:
    """A spool file's bytes; None where it is absent. SpoolError: a symlink, not a regular file,
    or (`check_owner`) another user's. Read through O_NOFOLLOW and checked on the open file, so
    nothing can swap the file between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # O_NONBLOCK: a planted FIFO would block
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SpoolError(f"{path}: a symlink, not a spooled file") from None
        raise
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SpoolError(f"{path}: not a regular file")
        if check_owner and info.st_uid != os.getuid():
            raise SpoolError(f"{path}: owned by uid {info.st_uid}, not by this user ({os.getuid()})")
        return f.read()


def spooled_steps(directory: Path) -> list[int]:
    """The steps spooled in `directory` (by name only; see read_spooled for what is delivered)."""
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for name in os.listdir(directory) if (m := SPOOLED.fullmatch(name)))


class RunLog:
    def __init__(self, tracking: Tracking, run_id: str, spool: Path, *, max_pending: int = 256,
                 open_timeout_s: float = 600.0):
        """`spool`: a folder inside spool_root() (trial_spool); `open_timeout_s`: how long to wait
        for the store to read the run's last delivered step."""
        self.tracking, self.run_id, self.spool, self.max_pending = tracking, run_id, Path(spool), max_pending
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.failures, self.next_try, self.sent = 0, 0.0, 0
        # After a start (a predecessor may have died mid-delivery) or a failure: check the run before
        # sending what might be there already.
        self.unsure = True
        self.delivered = self._last_delivered_step(wait=True, timeout_s=open_timeout_s)

    def log(self, metrics: dict, grid_png: Path | None = None) -> None:
        """Spool one eval period (metrics with `eval_period` = the step) and try to deliver."""
        step = int(metrics[STEP_METRIC])
        if step <= self.delivered or os.path.lexists(self.spool / f"{step:06d}.json"):
            return  # a retried trial re-running a period it already logged
        if grid_png is not None and Path(grid_png).exists():
            write_atomic(self.spool / f"{step:06d}.png", Path(grid_png).read_bytes())
        write_atomic(self.spool / f"{step:06d}.json", json.dumps(metrics).encode())  # Infinity/NaN round-trip
        self.flush()
        while len(self.pending()) >= self.max_pending:  # bounded: wait for the server instead of dropping
            time.sleep(max(0.0, self.next_try - time.monotonic()))
            self.flush()

    def pending(self) -> list[int]:
        return spooled_steps(self.spool)

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
                # A refused file is not a delivered step: a planted 999999.json must not hide the
                # steps that follow it.
                if step > self.delivered and self._deliver(step):
                    self.delivered, self.sent = step, self.sent + 1
                _discard(self.spool / f"{step:06d}.json")
                _discard(self.spool / f"{step:06d}.png")
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

    def _deliver(self, step: int) -> bool:
        """Send one spooled step; False where its metrics file is refused (or gone)."""
        try:
            spooled = read_spooled(self.spool / f"{step:06d}.json")
        except SpoolError as e:
            log.warning("not delivered: %s", e)
            return False
        if spooled is None:
            return False
        client = self.tracking.client()
        try:
            grid = read_spooled(self.spool / f"{step:06d}.png")
        except SpoolError as e:
            log.warning("grid not delivered: %s", e)
            grid = None
        if grid is not None:
            # Twice: under a stable name (grids/eval_NNNN.png, for people and the sweep's summary)
            # and as an MLflow image at its step, which the UI's image grid compares across trials.
            named = self.spool / "upload" / f"eval_{step:04d}.png"
            write_atomic(named, grid)
            client.log_artifact(self.run_id, str(named), artifact_path="grids")
            if not (self.unsure and self._image_logged(client, step)):  # each image uploads anew
                with PIL.Image.open(io.BytesIO(grid)) as image:
                    client.log_image(self.run_id, image.convert("RGB"), key=IMAGE_KEY, step=step)
        metrics = json.loads(spooled)
        now = int(time.time() * 1000)
        client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in _loggable(metrics).items()])
        return True

    def _image_logged(self, client, step: int) -> bool:
        return any(f"{IMAGE_KEY}+step+{step}+" in a.path for a in client.list_artifacts(self.run_id, "images"))

    def _last_delivered_step(self, *, wait: bool = False, timeout_s: float = 600.0) -> int:
        def read() -> int:
            history = self.tracking.client().get_metric_history(self.run_id, STEP_METRIC)
            return max((int(m.step) for m in history), default=0)
        return retrying(read, "read the trial's last logged eval period", timeout_s=timeout_s) if wait else read()

    def keep_pending_in(self, directory: Path) -> None:
        """Copy the undelivered steps into a checkpoint, so that a retry elsewhere or the driver
        (for a trial that ended before it could deliver them) can still deliver them."""
        _copy_steps(self.spool, Path(directory) / SPOOL_IN_CHECKPOINT, self.pending(), check_owner=True)

    def adopt(self, directory: Path) -> None:
        """Take over the undelivered steps a checkpoint carries (see keep_pending_in)."""
        carried = Path(directory) / SPOOL_IN_CHECKPOINT
        steps = [s for s in spooled_steps(carried)
                 if s > self.delivered and not os.path.lexists(self.spool / f"{s:06d}.json")]
        # The checkpoint is the sweep's own storage (synced or downloaded files): no owner check.
        _copy_steps(carried, self.spool, steps, check_owner=False)


def _copy_steps(source: Path, target: Path, steps: list[int], *, check_owner: bool) -> None:
    """Steps' files from one spool folder to another, grid first (a step's metrics never arrive
    without its grid); a refused file is left behind with a warning."""
    for step in steps:
        for suffix in (".png", ".json"):
            try:
                data = read_spooled(source / f"{step:06d}{suffix}", check_owner=check_owner)
            except SpoolError as e:
                log.warning("not copied: %s", e)
                if suffix == ".json":
                    break
                continue
            if data is not None:
                write_atomic(target / f"{step:06d}{suffix}", data)


def _discard(path: Path) -> None:
    """A spool entry gone: a file or a symlink unlinked (never its target), a planted folder removed."""
    try:
        path.unlink(missing_ok=True)
    except IsADirectoryError:
        shutil.rmtree(path)


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

