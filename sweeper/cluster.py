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

from sweeper.spec import SweepError
from sweeper.tracking import SWEEPS_DIR

STORAGE_ENV = "SWEEPER_STORAGE"


def joins_cluster() -> bool:
    address = os.environ.get("RAY_ADDRESS", "")
    return bool(address) and address != "local"


def storage_uri(given: str | None) -> str:
    """--storage, else SWEEPER_STORAGE, else `sweeps/ray_results` here; local paths made absolute."""
    value = given or os.environ.get(STORAGE_ENV) or str(SWEEPS_DIR / "ray_results")
    return value if "://" in value else str(Path(value).expanduser().resolve())


def check_placement(given_storage: str | None, tracking_uri: str) -> None:
    """On a cluster: refuse the local defaults (one line naming the fix)."""
    if not joins_cluster():
        return
    if not (given_storage or os.environ.get(STORAGE_ENV)):
        raise SweepError(f"storage: joining the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']} needs storage "
                         f"every node reaches for checkpoints: pass --storage s3://<bucket>/sweeps (or gs://..., or "
                         f"a path every node mounts, e.g. NFS) or set {STORAGE_ENV}")
    if tracking_uri.startswith("sqlite:") or "://" not in tracking_uri:
        raise SweepError(f"MLFLOW_TRACKING_URI: the cluster's trials cannot reach the local store {tracking_uri}; set "
                         f"MLFLOW_TRACKING_URI to the head's mlflow server (http://<head-private-ip>:5000, see cluster.yaml)")
