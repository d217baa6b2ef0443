"""Registered generators as inputs of other trials: resolving `models:/<name>@<alias>` (or a
version) to one exact version with its lineage, on the driver before anything starts, and loading
that version on a trial's device.

An alias is resolved once: every trial of a sweep uses the same version even if `@best` moves
while it runs, and each trial's run records which one.
"""
from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from trainables.errors import BadInput

URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class GeneratorError(BadInput):
    """A generator URI that cannot be used; one line naming the class and the URI."""


@dataclass(frozen=True)
class Lineage:
    """One registered generator version and what it was measured to be."""
    uri: str                 # as given, e.g. models:/cats-generator@best
    name: str
    version: str
    run_id: str              # the trial run it was logged from
    fid_final: float | None
    fid_extractor: str | None
    resolution: int | None
    z_dim: int

    @property
    def pinned_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def params(self, cls: str) -> dict:
        return {f"generator.{cls}.name": self.name, f"generator.{cls}.version": self.version,
                f"generator.{cls}.run_id": self.run_id, f"generator.{cls}.uri": self.uri,
                f"generator.{cls}.fid_final": self.fid_final,
                f"generator.{cls}.fid_extractor": self.fid_extractor}


def resolve(cls: str, uri: str, tracking_uri: str) -> Lineage:
    match = URI.match(uri)
    if match is None:
        raise GeneratorError(f"generators.{cls}: {uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    _require_store(tracking_uri, cls, uri)
    client = MlflowClient(tracking_uri)
    try:
        version = (client.get_model_version_by_alias(match["name"], match["alias"]) if match["alias"]
                   else client.get_model_version(match["name"], match["version"]))
        run = client.get_run(version.run_id)
    except mlflow.exceptions.MlflowException as e:
        raise GeneratorError(f"generators.{cls}: {uri} does not resolve in {tracking_uri}: "
                             f"{str(e).splitlines()[0]}") from None
    if "z_dim" not in run.data.params:
        raise GeneratorError(f"generators.{cls}: {uri} (version {version.version}) was not logged by a sweeper "
                             f"GAN trial (its run has no z_dim)")
    resolution = version.tags.get("sweeper.resolution") or run.data.params.get("resolution")
    fid = version.tags.get("fid_final")
    return Lineage(uri, version.name, str(version.version), version.run_id, float(fid) if fid else None,
                   version.tags.get("sweeper.fid_final_extractor"), int(resolution) if resolution else None,
                   int(run.data.params["z_dim"]))


def _require_store(tracking_uri: str, cls: str, uri: str) -> None:
    # Opening a missing sqlite file would create an empty store: say what is missing instead.
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise GeneratorError(f"generators.{cls}: {uri} does not resolve: no MLflow store at {path} "
                                 f"(run the generator sweeps first, or set MLFLOW_TRACKING_URI)")


def load(pinned_uri: str, tracking_uri: str, device):
    """The registered generator (a torch.export program: only tensors are unpickled) on `device`."""
    import torch
    from torch.export.passes import move_to_device_pass

    # A models:/ URI is looked up in the registry, which is the tracking store here; without both
    # set, a trial process would look in its own default store.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    directory = mlflow.artifacts.download_artifacts(artifact_uri=pinned_uri)
    files = glob.glob(f"{directory}/**/*.pt2", recursive=True)
    if not files:
        raise GeneratorError(f"{pinned_uri} holds no .pt2 program (logged by an older sweeper?)")
    program = torch.export.load(files[0])
    if torch.device(device).type != "cpu":
        program = move_to_device_pass(program, device)
    return program.module()
