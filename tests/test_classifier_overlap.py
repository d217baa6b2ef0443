"""A classifier never tests on its generators' training images (issue 21, item 5): each generator's
run records per-image digests of what it was trained on, and a test split holding any of them is
refused (exit 2, one line naming the count and the folder). On small copies of CIFAR-10 folders;
the generators are recorded in a real MLflow sqlite store as sweeper.driver.register records them
(the full GAN sweep -> register -> classifier path is tests/test_classifier_sweep.py)."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from mlflow.tracking import MlflowClient
from PIL import Image

from sweeper.definition import Sweep, SweepError
from sweeper.kinds import generators
from sweeper.kinds.classifier import CLASSIFIER
from trainables.classifier import ClassifierConfig
from trainables.data import image_digests, prepare
from trainables.errors import BadInput

REPO = Path(__file__).resolve().parents[1]
PER_CLASS, HELD_OUT = 60, 20  # training images per class; test images per class in the disjoint folder
FROM_TRAINING = 5  # training cats copied into the partly overlapping test folder, plus one mirrored
GENERATORS = "cat=models:/cats-generator@best,dog=models:/dogs-generator@best"


def _pixels(png: Path) -> np.ndarray:
    """uint8 [3, 32, 32] as Pillow reads the file (CIFAR is 32 px: no resize)."""
    return np.asarray(Image.open(png).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def _digest(pixels: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=8).hexdigest()


def _copy(files, folder: Path) -> None:
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / f.name)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """data/{cat,dog}: the generators' (and the classifier's) training images; heldout/{cat,dog}:
    CIFAR test images; partly/{cat,dog}: held-out images plus FROM_TRAINING training cats and one
    training cat mirrored left-right (the only overlap, 6 images)."""
    catdog = shared_data("cifar10-catdog")
    root = tmp_path_factory.mktemp("cifar")
    train = {cls: sorted((catdog / "train" / cls).glob("*.png"))[:PER_CLASS] for cls in ("cat", "dog")}
    for cls in ("cat", "dog"):
        test = sorted((catdog / "test" / cls).glob("*.png"))
        _copy(train[cls], root / "data" / cls)
        _copy(test[:HELD_OUT], root / "heldout" / cls)
        _copy(test[HELD_OUT:2 * HELD_OUT] + (train[cls][:FROM_TRAINING] if cls == "cat" else []), root / "partly" / cls)
    Image.open(train["cat"][FROM_TRAINING]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        root / "partly" / "cat" / "mirrored.png")
    return root


@pytest.fixture(scope="module")
def store(folders, tmp_path_factory):
    """A real sqlite store with cats-generator and dogs-generator @best, each trained on its class of
    data/ and recorded like a sweep's winner, and old-cats-generator, registered with no record."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("generators", artifact_location=(root / "artifacts").as_uri())
    for name, cls, record in (("cats", "cat", True), ("dogs", "dog", True), ("old-cats", "cat", False)):
        data = f"{folders / 'data'}:{cls}"
        dataset = prepare(data, 32).data
        run = client.create_run(experiment)
        for key, value in (("z_dim", 8), ("resolution", 32), ("data", data)):
            client.log_param(run.info.run_id, key, value)
        if record:  # what sweeper.driver.register writes from the GAN kind's Inputs.lineage
            client.log_text(run.info.run_id, generators.training_images_record(dataset), generators.TRAINING_IMAGES)
        _register(client, f"{name}-generator", run.info.run_id, {"sweeper.resolution": 32,
                                                                 "sweeper.data_fingerprint": dataset.fingerprint})
    return uri, client


def _register(client, name: str, run_id: str, tags: dict) -> None:
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run_id}/generator", run_id=run_id)
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, str(value))
    client.set_registered_model_alias(name, "best", version.version)


def _prepared(folders, test_data: str, generators_=GENERATORS):
    sweep = Sweep(name="catdog", config=ClassifierConfig(data=str(folders / "data"), test_data=test_data,
                                                         generators=generators_))
    prepared = CLASSIFIER.prepare(sweep)
    return prepared, CLASSIFIER.inputs(sweep, prepared, {"CPU": 1})


@pytest.fixture
def tracking(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    return store[1]


def test_image_digests_are_short_hashes_of_the_decoded_pixels(folders):
    cats = sorted((folders / "data" / "cat").iterdir())
    expected = {_digest(_pixels(png)) for png in cats}  # Pillow and hashlib alone
    assert set(image_digests(prepare(str(folders / "data" / "cat"), 32).data.images)) == expected
    assert len(expected) == PER_CLASS  # CIFAR's decoded pixels have no exact duplicates


def test_a_generators_record_holds_the_digests_of_its_training_images(folders, tracking):
    line = generators.resolve("cat", "models:/cats-generator@best", os.environ["MLFLOW_TRACKING_URI"])
    recorded = generators.training_images("cat", line, os.environ["MLFLOW_TRACKING_URI"])
    assert recorded.digests == {_digest(_pixels(png)) for png in (folders / "data" / "cat").iterdir()}
    assert recorded.resolution == 32 and recorded.data_fingerprint == line.data_fingerprint


def test_overlap_counts_test_images_among_the_training_images_as_they_are_or_mirrored(folders):
    train = prepare(f"{folders / 'data'}:cat", 32).data
    recorded = generators._parse_record(generators.training_images_record(train), "record")
    held_out = prepare(str(folders / "heldout"), 32).data.images
    one_pixel_off = train.images[:1].copy()
    one_pixel_off[0, 0, 0, 0] ^= 1
    mirrored = np.ascontiguousarray(train.images[3:5, :, :, ::-1])
    assert generators.overlap(held_out, recorded) == 0
    assert generators.overlap(np.concatenate([train.images[:3], mirrored, held_out, one_pixel_off]), recorded) == 5


def test_a_test_split_carved_from_the_generators_training_folder_is_refused_with_exit_2(folders, store, tmp_path):
    uri, client = store
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SWEEPER_OFFLINE": "1"}
    experiments = len(client.search_experiments())
    result = subprocess.run(
        [sys.executable, "-m", "sweeper", "run", str(REPO / "search_spaces" / "classifier.py"),
         "--set", f"data={folders / 'data'}", "--set", "test_data=", "--set", f"generators={GENERATORS}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    # test_fraction 0.2 of 60 images per class: 12 cats and 12 dogs, each one its class generator's.
    n = round(0.2 * PER_CLASS)
    data = folders / "data"
    assert (f"the test split carved from data {data} (test_fraction 0.2): of its {2 * n} test images, {n} are "
            f"training images of generators.cat (models:/cats-generator/1, trained on {data}:cat), {n} of "
            f"generators.dog (models:/dogs-generator/1, trained on {data}:dog)") in lines[0]
    assert len(client.search_experiments()) == experiments  # no sweep was recorded
    assert not (tmp_path / "sweeps").exists() or not any((tmp_path / "sweeps").iterdir())


def test_a_test_folder_holding_some_training_images_is_refused(folders, tracking):
    with pytest.raises(SweepError) as refused:
        _prepared(folders, str(folders / "partly"))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"test_data {folders / 'partly'}: of its {2 * HELD_OUT + FROM_TRAINING + 1} test "
                              f"images, {FROM_TRAINING + 1} are training images of generators.cat ")
    assert "generators.dog" not in message  # no dog of the test folder is a training image


def test_a_disjoint_test_folder_is_accepted_and_every_run_records_the_check(folders, tracking):
    prepared, inputs = _prepared(folders, str(folders / "heldout"))
    assert len(prepared["test"]) == 2 * HELD_OUT
    for cls in ("cat", "dog"):
        assert inputs.params[f"generator.{cls}.training_images"] == PER_CLASS
        assert inputs.params[f"generator.{cls}.test_overlap"] == 0


def test_a_generator_without_a_record_is_one_warning_and_the_check_recorded_as_not_made(folders, tracking, capsys):
    _, inputs = _prepared(folders, str(folders / "heldout"),
                          "cat=models:/old-cats-generator@best,dog=models:/dogs-generator@best")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sweeper: warning:")]
    assert len(warnings) == 1
    assert "generators.cat: models:/old-cats-generator/1 has no record of its training images" in warnings[0]
    assert inputs.params["generator.cat.test_overlap"] == "not checked"
    assert inputs.params["generator.dog.test_overlap"] == 0


def test_a_record_of_other_data_than_the_version_is_bad_input(folders, tracking):
    run_id = tracking.get_model_version_by_alias("cats-generator", "best").run_id
    dogs = prepare(f"{folders / 'data'}:dog", 32).data
    _register(tracking, "mislabelled-generator", run_id, {"sweeper.resolution": 32,
                                                          "sweeper.data_fingerprint": dogs.fingerprint})
    with pytest.raises(BadInput, match=r"generators.cat: models:/mislabelled-generator/1: its "
                                       r"lineage/training_images.txt is of data \w+, but the version was trained on"):
        _prepared(folders, str(folders / "heldout"),
                  "cat=models:/mislabelled-generator@best,dog=models:/dogs-generator@best")
