"""Registered generators as inputs of other trials: resolving `models:/<name>@<alias>` (or a
version) to one exact version with its lineage, on the driver before anything starts, and loading
that version on a trial's device.

An alias is resolved once: every trial of a sweep uses the same version even if `@best` moves
while it runs, and each trial's run records which one.

What a generator was trained on is part of its lineage, so that a classifier is never tested on
images a generator may have memorised (a CAS that rewards memorisation). Decisions:
- Recorded per image, not only as the dataset's fingerprint: a fingerprint says "same data" or
  "other data", never "these 412 test images are among them". The record is the sorted, distinct
  `trainables.data.image_digests` of the decoded training pixels (16 hex digits each: about 85 kB
  for CIFAR's 5,000 cats), one per line after a header naming the format, the resolution and the
  dataset's `content_fingerprint` (the version's `sweeper.data_fingerprint` tag).
- It is a text artifact, `lineage/training_images.txt`, in the run the version was logged from,
  written at registration before the version is tagged (sweeper.driver.register), so every
  version that can become `@best` has it. Of the pixels at the GAN's resolution, which the
  classifier must share anyway (ClassifierKind.check).
- Overlap is exact: a test image whose decoded pixels, or their left-right mirror (GAN and
  classifier batches are both mirrored), equal a training image's. A near duplicate (re-encoded,
  cropped) is not caught.
- A version registered before this record existed has none: the check cannot be made. That is a
  one-line warning and the sweep goes on, since refusing would strand every older generator; the
  classifier's runs record the check as not made. A record that is unreadable, of an unknown
  format or of other data than the version's fingerprint is bad input (exit 2).
"""
from __future__ import annotations

import glob
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from trainables.data import image_digests
from trainables.errors import BadInput

URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
TRAINING_IMAGES = "lineage/training_images.txt"  # in the generator's run: see the module's docstring
DIGESTS_FORMAT = "sweeper-image-digests-v1"


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
    data: str | None = None              # what its run was trained on, as the sweep named it
    data_fingerprint: str | None = None  # the content fingerprint of those images (a footing tag)

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
                   int(run.data.params["z_dim"]), run.data.params.get("data"),
                   version.tags.get("sweeper.data_fingerprint"))


@dataclass(frozen=True)
class TrainingImages:
    """A generator's record of its training images (see the module's docstring)."""
    digests: frozenset[str]
    resolution: int
    data_fingerprint: str


def training_images_record(dataset) -> str:
    """The record of an ImageSet a generator is trained on: the text of TRAINING_IMAGES."""
    header = (f"{DIGESTS_FORMAT} resolution={dataset.resolution} images={len(dataset)} "
              f"data_fingerprint={dataset.fingerprint}")
    return "\n".join([header, *sorted(set(image_digests(dataset.images)))]) + "\n"


def training_images(cls: str, line: Lineage, tracking_uri: str) -> TrainingImages | None:
    """The recorded training images of the generator for `cls`; None where it has no record."""
    client = MlflowClient(tracking_uri)
    where = f"generators.{cls}: {line.pinned_uri}"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bad-input error stays one line
    try:
        if TRAINING_IMAGES not in {a.path for a in client.list_artifacts(line.run_id, Path(TRAINING_IMAGES).parent.name)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(line.run_id, TRAINING_IMAGES, tmp)).read_text()
    except (mlflow.exceptions.MlflowException, OSError, UnicodeDecodeError) as e:
        raise GeneratorError(f"{where}: its {TRAINING_IMAGES} cannot be read: {str(e).splitlines()[0]}") from None
    record = _parse_record(text, f"{where}: its {TRAINING_IMAGES}")
    if line.data_fingerprint and record.data_fingerprint != line.data_fingerprint:
        raise GeneratorError(f"{where}: its {TRAINING_IMAGES} is of data {record.data_fingerprint[:16]}, but the "
                             f"version was trained on data {line.data_fingerprint[:16]}")
    return record


def overlap(images: np.ndarray, recorded: TrainingImages) -> int:
    """How many of `images` (uint8 [N, 3, R, R]) are among the recorded training images, as they are
    or mirrored left-right."""
    as_they_are, mirrored = image_digests(images), image_digests(images[..., ::-1])
    return sum(a in recorded.digests or b in recorded.digests for a, b in zip(as_they_are, mirrored))


def _parse_record(text: str, what: str) -> TrainingImages:
    header, *digests = text.splitlines() or [""]
    fields = dict(part.partition("=")[::2] for part in header.split()[1:])
    if not header.startswith(DIGESTS_FORMAT + " ") or not {"resolution", "data_fingerprint"} <= set(fields):
        raise GeneratorError(f"{what} is not a {DIGESTS_FORMAT} record (first line {header[:60]!r})")
    if not fields["resolution"].isdigit():
        raise GeneratorError(f"{what}: resolution {fields['resolution']!r} is not a number")
    return TrainingImages(frozenset(digests), int(fields["resolution"]), fields["data_fingerprint"])


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
