"""The winner's model as a registered MLflow model, and when the alias `best` moves to it.

Every finished sweep registers its winner as a new version (the history stays browsable); the
alias `best` moves to it only when it is better on the same footing as the version `best` points
to: the same tags in the sweep's footing (for a generator: final FID extractor, data, resolution
and sample counts; for a classifier: the test split and resolution) and a better final number.
Numbers measured differently are not comparable (FID is biased by the sample count; another test
split is another quantity), so a model measured differently never takes `best` from the version
`best` already points to.
"""
from __future__ import annotations

import math

import mlflow
import numpy as np
import torch

ALIAS = "best"
DECISION_TAG = "sweeper.best_alias_decision"
FOOTING_TAG = "sweeper.footing"  # the comma-separated tag names that a version was measured on


def model_name(sweep_name: str, kind: str, quick: bool = False) -> str:
    """`<sweep>-generator`, `<sweep>-classifier`; `--quick` sweeps register apart, so a CPU-budget
    model never competes with real ones."""
    return f"{sweep_name}-quick-{kind}" if quick else f"{sweep_name}-{kind}"


def log_pt2_model(tracking, run_id: str, model, example: np.ndarray, *, name: str, registered_name: str) -> str:
    """Logs `model` into the run in MLflow's `pt2` format (torch.export: loading it back unpickles
    nothing but tensors) and registers it; returns the new version."""
    mlflow.set_tracking_uri(tracking.uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model, name=name, input_example=example, serialization_format="pt2",
            registered_model_name=registered_name,
            # Given explicitly: inferring them spawns a subprocess that re-imports the world.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    return str(info.registered_model_version)


def tag_version(client, name: str, version: str, *, tags: dict, footing: dict, description: str) -> None:
    for key, value in {**tags, **footing, FOOTING_TAG: ",".join(sorted(footing))}.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(name, version, description=description)


def promote(client, name: str, version: str, metric: str, mode: str) -> tuple[bool, str]:
    """Moves `best` to `version` if its `metric` tag is better on the same footing; returns (moved, why)."""
    new = client.get_model_version(name, version)
    try:
        current = client.get_model_version_by_alias(name, ALIAS)
    except mlflow.exceptions.MlflowException:
        current = None
    moved, why = _decide(new.tags, current.tags if current else None, current.version if current else None,
                         metric, mode)
    if moved:
        client.set_registered_model_alias(name, ALIAS, version)
    client.set_model_version_tag(name, version, DECISION_TAG, why)
    return moved, why


def _decide(new: dict, current: dict | None, current_version: str | None, metric: str,
            mode: str) -> tuple[bool, str]:
    value = float(new.get(metric, "nan"))
    if not math.isfinite(value):
        return False, f"not moved: this version has no finite {metric}"
    if current is None:
        return True, f"moved: no version had @{ALIAS} yet"
    footing = sorted(set(new.get(FOOTING_TAG, "").split(",")) | set(current.get(FOOTING_TAG, "").split(",")) - {""})
    differs = [key for key in footing if new.get(key) != current.get(key)]
    if differs:
        key = differs[0]
        return False, (f"not moved: measured on another footing than version {current_version} "
                       f"({key} {new.get(key)} vs {current.get(key)}), so the numbers do not compare")
    old = float(current.get(metric, "nan"))
    better = value < old if mode == "min" else value > old
    if math.isfinite(old) and not better:
        return False, f"not moved: {metric} {value:.4g} is not {'below' if mode == 'min' else 'above'} " \
                      f"version {current_version}'s {old:.4g}"
    return True, f"moved: {metric} {value:.4g} {'below' if mode == 'min' else 'above'} version {current_version}'s {old:.4g}"
