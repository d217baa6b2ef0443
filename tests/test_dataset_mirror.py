"""Known dataset names from a local mirror (SWEEPER_DATASETS), their test split ("cifar10/test") and
class lists ("cifar10:cat,dog"), on small real PNG folders written here; no network."""
import shutil

import numpy as np
import pytest
from PIL import Image

from trainables.data import prepare, source_classes
from trainables.data.imageset import DatasetError


def _pngs(folder, n, seed):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _classes(root, counts, seed=0):
    for i, (cls, n) in enumerate(sorted(counts.items())):
        _pngs(root / cls, n, seed + i)
    return root


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    root = tmp_path / "mirror"
    _classes(root / "cifar10-catdogbird" / "train", {"cat": 3, "dog": 4, "bird": 2})
    _classes(root / "cifar10-catdogbird" / "test", {"cat": 2, "dog": 1, "bird": 1}, seed=10)
    _classes(root / "cifar10-zzz", {"frog": 1}, seed=20)  # sorted after the first match: never read
    _classes(root / "afhq-cat-128" / "train", {"cat": 2}, seed=30)  # no test/ split
    monkeypatch.setenv("SWEEPER_DATASETS", str(root))
    return root


def test_a_known_name_resolves_from_the_first_matching_mirror_folder(mirror):
    assert source_classes("cifar10") == ("bird", "cat", "dog")
    assert source_classes("afhq-cat") == ("cat",)
    data = prepare("cifar10:dog", 32).data
    assert data.classes == ("bird", "cat", "dog") and int(np.sum(data.labels == 2)) == len(data) == 4


def test_the_exact_name_wins_over_a_prefixed_one(mirror):
    _classes(mirror / "cifar10", {"ship": 2}, seed=40)
    assert source_classes("cifar10") == ("ship",)


def test_an_alias_is_looked_up_under_its_own_name_first(mirror):
    _classes(mirror / "afhq-dog-64", {"dog": 3}, seed=50)
    assert source_classes("afhq-dog") == ("dog",)
    assert len(prepare("afhq-dog", 32).data) == 3
    assert len(prepare("afhq-cat", 32).data) == 2


def test_a_class_list_is_the_set_a_folder_of_only_those_classes_makes(mirror, tmp_path):
    picked = prepare("cifar10/test:dog,cat", 32).data
    # Independent reference: the same cat and dog files copied into a folder that holds nothing else.
    alone = tmp_path / "alone"
    for cls in ("cat", "dog"):
        shutil.copytree(mirror / "cifar10-catdogbird" / "test" / cls, alone / cls)
    reference = prepare(str(alone), 32).data
    assert picked.classes == ("cat", "dog") and sorted(picked.labels.tolist()) == [0, 0, 1]
    assert picked.fingerprint == reference.fingerprint
    assert source_classes("cifar10/test:dog,cat") == ("cat", "dog")
    assert prepare("cifar10:bird,cat,dog", 32).data.fingerprint == prepare("cifar10", 32).data.fingerprint


def test_a_class_list_on_a_folder_and_on_toy_faces(tmp_path):
    pets = _classes(tmp_path / "pets", {"cat": 2, "dog": 3, "owl": 1})
    data = prepare(f"{pets}:owl,dog", 32).data
    assert data.classes == ("dog", "owl") and np.bincount(data.labels).tolist() == [3, 1]
    assert prepare("toy-faces:cat,dog", 32, toy_size=16).data.classes == ("cat", "dog")


@pytest.mark.parametrize("source, fragments", [
    ("cat-faces-64", ["cat-faces-64", "SWEEPER_DATASETS=", "mirror"]),
    ("afhq-cat/test", ["afhq-cat/test", "afhq-cat-128", "test/"]),
    ("cifar10:cat,horse", ["'horse'", "cat, dog"]),
    ("cifar10:cat,", ["cifar10:cat,", "empty class name"]),
])
def test_what_the_mirror_cannot_serve_is_one_line_naming_it(mirror, source, fragments):
    with pytest.raises(DatasetError) as error:
        source_classes(source)
    message = str(error.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    if source == "cat-faces-64":
        assert str(mirror) in message


def test_a_missing_mirror_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPER_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"^SWEEPER_DATASETS=.*nowhere: no such folder"):
        prepare("cifar10:cat", 32)


def test_without_a_mirror_the_test_split_comes_from_the_downloaded_copy(tmp_path, monkeypatch):
    # The cache as a finished download leaves it (trainables.data.remote: images/{train,test}); offline,
    # so a wrong path cannot be papered over by a download.
    monkeypatch.setenv("SWEEPER_DATASETS", "")
    monkeypatch.setenv("SWEEPER_OFFLINE", "1")
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    images = tmp_path / "cache" / "datasets" / "cifar10" / "images"
    _classes(images / "train", {"cat": 3, "dog": 2, "frog": 2})
    _classes(images / "test", {"cat": 1, "dog": 2, "frog": 1}, seed=10)
    test = prepare("cifar10/test:cat,dog", 32).data
    assert test.classes == ("cat", "dog") and np.bincount(test.labels).tolist() == [1, 2]
    assert np.bincount(prepare("cifar10:cat,dog", 32).data.labels).tolist() == [3, 2]
    assert source_classes("cifar10") == ("cat", "dog", "frog")  # in the cache: listed, nothing decoded
    with pytest.raises(DatasetError, match=r"^cat-faces-64/test: cat-faces-64 publishes no test split$"):
        source_classes("cat-faces-64/test")  # refused before any download
