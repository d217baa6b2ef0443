"""Where a sweep runs and keeps its state: on this machine, or on a Ray cluster joined through
RAY_ADDRESS (`ray job submit` sets it).

On a cluster nothing may live only on the driver: every node must reach the Tune storage (trial
checkpoints, read back by retries, the final evaluation and the registry) and the MLflow store.
So joining a cluster requires an explicit storage (`--storage` or SWEEPER_STORAGE: s3://, gs://,
or a path every node mounts, such as NFS) and an MLflow server (MLFLOW_TRACKING_URI), checked
before anything starts. A cluster that autoscales from 0 workers has one node when the sweep
starts, so the rule follows RAY_ADDRESS, not the number of nodes alive.
"""
from __future__ import annotations

import os
from pathlib import Path

from sweeper.definition import SweepError
from sweeper.tracking.runs import SWEEPS_DIR

STORAGE_ENV = "SWEEPER_STORAGE"
# The URI schemes Tune's storage understands (it opens them with pyarrow.fs.FileSystem.from_uri).
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")


def joins_cluster() -> bool:
    address = os.environ.get("RAY_ADDRESS", "")
    return bool(address) and address != "local"


def storage_uri(given: str | None) -> str:
    """--storage, else SWEEPER_STORAGE, else `sweeps/ray_results` here; local paths made absolute."""
    value = given or os.environ.get(STORAGE_ENV) or str(SWEEPS_DIR / "ray_results")
    return value if "://" in value else str(Path(value).expanduser().resolve())


def check_placement(given_storage: str | None, tracking_uri: str) -> None:
    """A storage that cannot work (see `check_storage`); on a cluster, the local defaults (one
    line naming the fix)."""
    check_storage(given_storage)
    if not joins_cluster():
        return
    if not (given_storage or os.environ.get(STORAGE_ENV)):
        raise SweepError(f"storage: joining the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']} needs storage "
                         f"every node reaches for checkpoints: pass --storage s3://<bucket>/sweeps (or gs://..., or "
                         f"a path every node mounts, e.g. NFS) or set {STORAGE_ENV}")
    if tracking_uri.startswith("sqlite:") or "://" not in tracking_uri:
        raise SweepError(f"MLFLOW_TRACKING_URI: the cluster's trials cannot reach the local store {tracking_uri}; set "
                         f"MLFLOW_TRACKING_URI to the head's mlflow server (http://<head-private-ip>:5000, see cluster.yaml)")


def check_storage(given: str | None) -> None:
    """Refuse a storage URI of a scheme Tune cannot open, or a local path that is not (and cannot
    become) a writable folder; nothing is created and nothing is reached over the network."""
    value = given or os.environ.get(STORAGE_ENV)
    if not value:
        return  # the default, sweeps/ray_results here
    where = f"--storage {value}" if given else f"{STORAGE_ENV}={value}"
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() not in STORAGE_SCHEMES:
        raise SweepError(f"{where}: unknown scheme '{scheme}://'; use a local path or "
                         f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}")
    if sep and scheme.lower() != "file":
        return
    path = Path(rest if sep else value).expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise SweepError(f"{where}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SweepError(f"{where}: {existing} is not writable")
