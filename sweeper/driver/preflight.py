"""What a sweep needs from this machine and its stores, proven before any data is prepared or Ray
starts: a store that cannot be written, or a device the cluster can never provide, is one line and
exit code 2 in seconds, not a traceback after minutes of reference statistics (or three failed
tries of every trial).

Decisions:
- **A real write, removed after**, not a permission check: `os.access` says yes to root on any
  folder, and nothing but a write tells a read-only mount, a folder under a regular file, or a
  server that answers its health check and refuses writes.
- **Nothing is left behind, and nothing is created that the sweep would not create.** A folder
  that does not exist yet (the default `sweeps/`) is proven creatable by a temporary folder made
  and removed in its nearest existing ancestor; the MLflow store is written to by a change rolled
  back (sqlite) or a tag set and deleted (a server, a database).
- **The store is proven from this machine.** On a cluster every node must reach it too; that is
  `sweeper.driver.cluster`'s rule (a shared storage, a tracking server), not something the driver
  can prove alone.
- **`device=cuda` needs a GPU now, or a cluster that may add one.** Without RAY_ADDRESS the trials
  run here: no GPU here means never. On a cluster, like the storage rule, the decision follows
  RAY_ADDRESS: the autoscaler may add GPU workers that are not up yet (cluster.yaml scales from 0),
  so it is allowed.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import tempfile
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from sweeper.definition import SweepError
from sweeper.driver.cluster import joins_cluster

PROBE = ".sweeper-write-check"  # the name (a prefix) of what a probe writes and removes at once
PROBE_TAG = "sweeper.write_check"
HTTP_ONCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
SQLITE_TIMEOUT_S = 5.0  # another sweep's write holds the database's lock for milliseconds


def check_device(sweep) -> None:
    """`device=cuda` where no GPU can ever run a trial (see the module's docstring)."""
    if getattr(sweep.config, "device", None) != "cuda" or joins_cluster():
        return
    import torch

    if not torch.cuda.is_available():
        raise SweepError("device: 'cuda' but this machine has no usable GPU (torch.cuda.is_available() is False) "
                         "and the trials run here; use device=auto (CUDA where a trial gets a GPU) or device=cpu")


def prove_storage(path: str, storage: str | None = None) -> None:
    """Tune's storage (`storage`, as the error names it) can hold the experiment at `path` (a local
    path, file://, s3://, gs://...)."""
    where = f"storage {storage or path}"
    scheme, sep, rest = path.partition("://")
    if not sep or scheme.lower() == "file":
        _prove_folder(Path(unquote(rest) if sep else path).expanduser(), where)
        return
    _prove_object_store(path, where)


def prove_tracking(uri: str, experiment: str) -> None:
    """The MLflow store at `uri` takes a write (`experiment`: the sweep's MLflow experiment, where a
    server's probe writes if it exists)."""
    where = f"MLFLOW_TRACKING_URI={uri}"
    if uri.startswith("sqlite:"):
        _prove_sqlite(_sqlite_file(uri), where)
    elif "://" not in uri or uri.startswith("file:"):
        _prove_folder(Path(unquote(urlparse(uri).path) if uri.startswith("file:") else uri).expanduser(), where)
    else:
        _prove_mlflow_write(uri, experiment, where)


def _sqlite_file(uri: str) -> Path:
    # sqlite:///relative.db, sqlite:////absolute.db (SQLAlchemy's forms; a query string may follow).
    return Path(uri.split("?", 1)[0][len("sqlite:///"):]).expanduser()


def _prove_sqlite(file: Path, where: str) -> None:
    """An existing database: a table created and rolled back (the journal or WAL beside it written
    too). A new one: its folder, where MLflow will create it (and the missing folders above it)."""
    if not file.exists():
        _prove_folder(file.parent, where)
        return
    try:
        connection = sqlite3.connect(f"{file.resolve().as_uri()}?mode=rw", uri=True, timeout=SQLITE_TIMEOUT_S,
                                     isolation_level=None)
    except sqlite3.Error as e:
        raise SweepError(f"{where}: cannot open {file} for writing ({_first_line(e)})") from None
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(f"CREATE TABLE {PROBE.strip('.').replace('-', '_')}_{uuid.uuid4().hex} (x)")
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            return  # another writer holds it: the store is in use, not unusable
        raise SweepError(f"{where}: cannot write to {file} ({_first_line(e)})") from None
    except sqlite3.DatabaseError as e:
        raise SweepError(f"{where}: {file} is not a usable sqlite database ({_first_line(e)})") from None
    finally:
        connection.close()


def _prove_folder(folder: Path, where: str) -> None:
    """`folder` (or, where it does not exist yet, its nearest existing ancestor, where it will be
    created) takes a new folder, removed at once."""
    folder = folder.resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise SweepError(f"{where}: {existing} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=PROBE, dir=existing)
    except OSError as e:
        what = "" if existing == folder else f" (to create {folder})"
        raise SweepError(f"{where}: cannot write in {existing}{what}: {e.strerror or _first_line(e)}") from None
    shutil.rmtree(probe, ignore_errors=True)


def _prove_object_store(path: str, where: str) -> None:
    """A small object written under the experiment's prefix and deleted (an object store has no
    folders to create)."""
    import pyarrow
    import pyarrow.fs

    try:
        fs, base = pyarrow.fs.FileSystem.from_uri(path)
        probe = f"{base.rstrip('/')}/{PROBE}-{uuid.uuid4().hex}"
        with fs.open_output_stream(probe) as f:
            f.write(b"sweeper checks that it can write here; deleted at once\n")
        fs.delete_file(probe)
    except (OSError, pyarrow.ArrowException) as e:
        raise SweepError(f"{where}: cannot write there ({_first_line(e)})") from None


def _prove_mlflow_write(uri: str, experiment: str, where: str) -> None:
    """A tag set on an experiment and deleted: the sweep's own if it exists (deleted, it refuses the
    tag as it would refuse the sweep's runs), else the store's Default, experiment 0. A store whose
    Default someone deleted, with no experiment of the sweep yet, has nothing to write to without
    creating an experiment: it is left to the reachability check."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        with _one_http_try():
            client = MlflowClient(uri)
            target = client.get_experiment_by_name(experiment) or _active_default(client)
            if target is None:
                return
            client.set_experiment_tag(target.experiment_id, PROBE_TAG, "deleted at once")
            client.delete_experiment_tag(target.experiment_id, PROBE_TAG)
    except MlflowException as e:
        # A server with MLflow's basic-auth app answers 401 (no or wrong password) or 403
        # (the REST client puts the status in the message only, as "error code 401").
        denied = re.search(r"\b40[13]\b", str(e)) is not None
        hint = "; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" if denied else ""
        raise SweepError(f"{where}: the tracking store refuses a write ({_first_line(e)}){hint}") from None


def _active_default(client):
    from mlflow.exceptions import MlflowException

    try:
        default = client.get_experiment("0")
    except MlflowException:
        return None  # gone for good
    return default if default.lifecycle_stage == "active" else None


@contextlib.contextmanager
def _one_http_try():
    """MLflow's client retries a failing request for minutes (7 tries, doubling waits); the probe
    asks once. Its environment variables are read at each request, so only the probe's change."""
    saved = {key: os.environ.get(key) for key in HTTP_ONCE}
    os.environ.update(HTTP_ONCE)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
