"""The winner's generator as a registered MLflow model, and when the alias `best` moves to it.

Every finished sweep registers its winner as a new version (the history stays browsable); the
alias `best` moves to it only when it is better on the same footing as the version `best` points
to: the same final FID extractor, data, resolution and sample counts, and a lower `fid_final`.
FIDs measured differently are not comparable (FID is biased by the sample count, and a different
extractor or dataset makes it another quantity), so a model measured differently never takes
`best` from one that `best` already points to.
"""
from __future__ import annotations

import math

import mlflow
import numpy as np
import torch

from sweeper.tracking import Tracking
from trainables.training.checkpoint import load_generator

ALIAS = "best"
FID_TAG = "fid_final"
# What makes two fid_final numbers comparable; each is a tag on every registered version.
FOOTING = ("sweeper.fid_final_extractor", "sweeper.data_fingerprint", "sweeper.resolution",
           "sweeper.final_fid_samples", "sweeper.ref_samples")


def model_name(sweep_name: str, quick: bool = False) -> str:
    """`--quick` sweeps register apart: a CPU-budget model never competes with real ones."""
    return f"{sweep_name}-quick-generator" if quick else f"{sweep_name}-generator"


def register_generator(tracking: Tracking, run_id: str, cfg, checkpoint_dir, name: str, *,
                       tags: dict, description: str) -> str:
    """Logs the checkpoint's (EMA) generator into the trial's run and registers it; returns the version.
    Saved as `pt2` (torch.export): loading it back unpickles nothing but tensors."""
    G = load_generator(cfg, checkpoint_dir).eval()
    # Batch of 2: torch.export specialises a batch of 1 to a constant; this keeps the batch dynamic.
    example = np.random.default_rng(0).standard_normal((2, cfg.z_dim)).astype(np.float32)
    mlflow.set_tracking_uri(tracking.uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            G, name="generator", input_example=example, serialization_format="pt2",
            registered_model_name=name,
            # Given explicitly: inferring them spawns a subprocess that re-imports the world.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    version = str(info.registered_model_version)
    client = tracking.client()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(name, version, description=description)
    return version


def promote(client, name: str, version: str) -> tuple[bool, str]:
    """Moves `best` to `version` if it is better on the same footing; returns (moved, why)."""
    new = client.get_model_version(name, version)
    try:
        current = client.get_model_version_by_alias(name, ALIAS)
    except mlflow.exceptions.MlflowException:
        current = None
    moved, why = _decide(new.tags, current.tags if current else None, current.version if current else None)
    if moved:
        client.set_registered_model_alias(name, ALIAS, version)
    client.set_model_version_tag(name, version, "sweeper.best_alias_decision", why)
    return moved, why


def _decide(new: dict, current: dict | None, current_version: str | None) -> tuple[bool, str]:
    fid = float(new.get(FID_TAG, "nan"))
    if not math.isfinite(fid):
        return False, f"not moved: this version has no finite {FID_TAG}"
    if current is None:
        return True, f"moved: no version had @{ALIAS} yet"
    differs = [key for key in FOOTING if new.get(key) != current.get(key)]
    if differs:
        key = differs[0]
        return False, (f"not moved: measured on another footing than version {current_version} "
                       f"({key} {new.get(key)} vs {current.get(key)}), so the FIDs do not compare")
    old = float(current.get(FID_TAG, "nan"))
    if math.isfinite(old) and fid >= old:
        return False, f"not moved: {FID_TAG} {fid:.3f} is not below version {current_version}'s {old:.3f}"
    return True, f"moved: {FID_TAG} {fid:.3f} below version {current_version}'s {old:.3f}"
