"""Datasets: the procedural toy-faces set, folders of real image files, source strings."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.data import DatasetError, ImageSet, check_source, load_dataset, load_folder, toy_faces
from trainables.data.imageset import make_imageset

AFHQ = (Path(__file__).resolve().parents[1] / "../shared/data/afhq-cat-128").resolve()


# --- toy-faces -------------------------------------------------------------------------------


def test_toy_faces_shapes_and_dtypes():
    data = toy_faces(10, 24, seed=0)
    assert isinstance(data, ImageSet)
    assert data.images.shape == (10, 3, 24, 24) and data.images.dtype == np.uint8
    assert data.images.flags.c_contiguous
    assert data.labels.dtype == np.int64 and data.labels.shape == (10,)
    assert data.classes == ("cat", "dog")
    assert len(data) == 10 and data.resolution == 24 and data.skipped == {}


def test_toy_faces_is_deterministic_per_seed():
    a, b, c = toy_faces(12, 16, seed=3), toy_faces(12, 16, seed=3), toy_faces(12, 16, seed=4)
    assert a.images.tobytes() == b.images.tobytes() and a.fingerprint == b.fingerprint
    assert a.images.tobytes() != c.images.tobytes() and a.fingerprint != c.fingerprint


def test_toy_face_i_does_not_depend_on_n():
    small, large = toy_faces(6, 16, seed=1), toy_faces(21, 16, seed=1)
    np.testing.assert_array_equal(small.images, large.images[:6])
    np.testing.assert_array_equal(small.labels, large.labels[:6])


def test_toy_faces_classes_are_balanced_and_look_different():
    data = toy_faces(512, 16, seed=0)
    cats, dogs = data.images[data.labels == 0], data.images[data.labels == 1]
    assert len(cats) == len(dogs) == 256

    def separated(a, b):  # share of pixel values whose class means differ by > 5 standard errors
        a, b = a.astype(np.float64), b.astype(np.float64)
        t = np.abs(a.mean(0) - b.mean(0)) / np.sqrt(a.var(0) / len(a) + b.var(0) / len(b) + 1e-9)
        return (t > 5).mean()

    assert separated(cats, dogs) > 0.05
    assert separated(cats[::2], cats[1::2]) == separated(dogs[::2], dogs[1::2]) == 0


def test_toy_faces_one_class_matches_the_full_set():
    full = toy_faces(8, 16, seed=2)
    dogs = toy_faces(4, 16, seed=2, class_name="dog")
    assert dogs.labels.tolist() == [1, 1, 1, 1] and dogs.classes == ("cat", "dog")
    np.testing.assert_array_equal(dogs.images, full.images[1::2])


@pytest.mark.parametrize("resolution", [8, 17, 64])
def test_toy_faces_any_resolution_from_8(resolution):
    data = toy_faces(2, resolution)
    assert data.images.shape == (2, 3, resolution, resolution)
    assert data.images.std() > 10  # a drawn face, not a blank canvas


@pytest.mark.parametrize("kwargs", [dict(n=0, resolution=16), dict(n=4, resolution=7),
                                    dict(n=4, resolution=16, class_name="cow")])
def test_toy_faces_rejects_bad_arguments(kwargs):
    with pytest.raises(DatasetError):
        toy_faces(**kwargs)


# --- files on disk ---------------------------------------------------------------------------


def _noise(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def _make_pets(root: Path) -> Path:
    """cat/: 3 good (one nested) + 1 empty; dog/: 2 good + truncated + text; plus ignored files."""
    (root / "cat" / "indoor").mkdir(parents=True)
    (root / "dog").mkdir()
    _noise(40, 40, 1).save(root / "cat" / "a.png")
    _noise(50, 40, 2).save(root / "cat" / "b.jpg", quality=90)
    _noise(40, 60, 3).save(root / "cat" / "indoor" / "c.PNG")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    _noise(64, 64, 4).save(root / "dog" / "d.JPEG")
    _noise(30, 30, 5).save(root / "dog" / "e.png")
    whole = (root / "dog" / "e.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "dog" / "notes.jpg").write_text("not an image, just text\n" * 20)
    (root / "dog" / "README.txt").write_text("ignored: not an image extension")
    _noise(8, 8, 6).save(root / "dog" / ".hidden.png")
    return root


def _load_one(tmp_path: Path, image: Image.Image, name: str, resolution: int) -> np.ndarray:
    folder = tmp_path / "one"
    folder.mkdir()
    image.save(folder / name)
    return load_folder(folder, resolution).images[0].transpose(1, 2, 0)


def test_load_folder_counts_classes_and_skipped_files(tmp_path):
    data = load_folder(_make_pets(tmp_path / "pets"), 16)
    assert data.classes == ("cat", "dog")
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.images.shape == (5, 3, 16, 16) and data.images.dtype == np.uint8
    assert data.skipped == {"empty": 1, "truncated": 1, "not-an-image": 1}


def _centre_square(path: Path, resolution: int) -> np.ndarray:
    """The documented decoding, written here with PIL alone: the file's centred square, LANCZOS to
    `resolution`, as uint8 [3, R, R]."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        square = im.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)


def test_load_folder_order_is_sorted(tmp_path):
    # Every image, in the order of its path under the folder (class folder first, then the rest of
    # the path): the usable files of _make_pets, listed here out of order and sorted by the test.
    root = _make_pets(tmp_path / "pets")
    usable = ["dog/e.png", "cat/indoor/c.PNG", "cat/b.jpg", "dog/d.JPEG", "cat/a.png"]
    order = sorted(usable)
    assert order[0] == "cat/a.png" and order[-2:] == ["dog/d.JPEG", "dog/e.png"]  # the sort meant
    data = load_folder(root, 16)
    assert len(data) == len(order)
    assert data.labels.tolist() == [data.classes.index(name.split("/")[0]) for name in order]
    for i, name in enumerate(order):
        np.testing.assert_array_equal(data.images[i], _centre_square(root / name, 16), err_msg=name)


def test_class_selection(tmp_path):
    root = _make_pets(tmp_path / "pets")
    dogs = load_folder(root, 16, class_name="dog")
    assert len(dogs) == 2 and dogs.labels.tolist() == [1, 1] and dogs.classes == ("cat", "dog")
    assert dogs.skipped == {"truncated": 1, "not-an-image": 1}
    with pytest.raises(DatasetError, match=r"'horse'.*cat, dog"):
        load_folder(root, 16, class_name="horse")


def test_files_directly_in_the_folder_take_its_name(tmp_path):
    folder = tmp_path / "kittens"
    folder.mkdir()
    _noise(20, 20).save(folder / "x.bmp")
    _noise(20, 20, 1).save(folder / "y.gif")
    _noise(20, 20, 2).save(folder / "z.webp")
    data = load_folder(folder, 8)
    assert data.classes == ("kittens",) and len(data) == 3


def test_fingerprint_follows_content_not_path(tmp_path):
    first = _make_pets(tmp_path / "a" / "pets")
    second = tmp_path / "b" / "elsewhere"
    shutil.copytree(first, second)
    assert load_folder(first, 16).fingerprint == load_folder(second, 16).fingerprint

    pixels = np.asarray(Image.open(second / "cat" / "a.png")).copy()
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(second / "cat" / "a.png")
    # At 40 px a.png (40x40) is not resampled, so the one-unit change survives loading.
    assert load_folder(first, 40).fingerprint != load_folder(second, 40).fingerprint


def test_fingerprint_covers_labels_and_class_names():
    images = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    base = make_imageset(images, np.array([0, 1]), ("cat", "dog"))
    assert base.fingerprint != make_imageset(images, np.array([1, 0]), ("cat", "dog")).fingerprint
    assert base.fingerprint != make_imageset(images, np.array([0, 1]), ("dog", "cat")).fingerprint


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_other_modes_become_rgb(tmp_path, mode):
    colour = (200, 40, 90)
    image = Image.new("RGB", (24, 24), colour)
    image = image.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else image.convert(mode)
    expected = image.convert("RGB").getpixel((0, 0))
    pixels = _load_one(tmp_path, image, f"{mode}.png", 12)
    assert pixels.shape == (12, 12, 3)
    assert (pixels == expected).all()


def test_transparent_pixels_become_white(tmp_path):
    pixels = _load_one(tmp_path, Image.new("RGBA", (16, 16), (0, 0, 0, 0)), "clear.png", 8)
    assert (pixels == 255).all()


@pytest.mark.parametrize("size", [(90, 30), (30, 90)])
def test_non_square_images_are_centre_cropped(tmp_path, size):
    wide = size[0] > size[1]
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    thirds = [slice(0, 30), slice(30, 60), slice(60, 90)]
    for part, colour in zip(thirds, [(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        pixels[(slice(None), part) if wide else (part, slice(None))] = colour
    loaded = _load_one(tmp_path, Image.fromarray(pixels), "strip.png", 8)
    assert (loaded == (0, 255, 0)).all()  # only the middle third survives, with no bleed


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (30, 30), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 15, 30))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: the red half belongs on the right
    folder = tmp_path / "one"
    folder.mkdir()
    image.save(folder / "r.jpg", exif=exif, quality=95)
    pixels = load_folder(folder, 30).images[0].transpose(1, 2, 0).astype(int)
    assert pixels[15, 25, 0] > 200 and pixels[15, 5, 2] > 200


def test_broken_image_data_is_counted_as_corrupt(tmp_path):
    folder = tmp_path / "cats"
    folder.mkdir()
    _noise(40, 40).save(folder / "good.png")
    data = bytearray((folder / "good.png").read_bytes())
    data[data.find(b"IDAT") + 200] ^= 0xFF
    (folder / "bad.png").write_bytes(bytes(data))
    assert load_folder(folder, 8).skipped == {"corrupt": 1}


def test_zero_usable_images_is_an_error(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.png").write_text("hello")
    with pytest.raises(DatasetError, match="no usable images in .*broken"):
        load_folder(folder, 16)
    with pytest.raises(DatasetError, match="no usable images"):
        load_folder(tmp_path / "broken", 16, class_name="broken")


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="not found: .*nowhere"):
        load_folder(tmp_path / "nowhere", 16)


# --- source strings --------------------------------------------------------------------------


def test_load_dataset_sources(tmp_path):
    root = _make_pets(tmp_path / "pets")
    assert load_dataset("toy-faces", 16, toy_size=6).fingerprint == toy_faces(6, 16).fingerprint
    assert load_dataset("toy-faces:cat", 16, toy_size=3).labels.tolist() == [0, 0, 0]
    assert len(load_dataset(str(root), 16)) == 5
    assert load_dataset(f"{root}:cat", 16).labels.tolist() == [0, 0, 0]
    with pytest.raises(DatasetError, match="dataset not found: .*nowhere"):
        load_dataset(str(tmp_path / "nowhere"), 16)
    with pytest.raises(DatasetError, match="'horse'"):
        load_dataset(f"{root}:horse", 16)


def test_check_source_validates_without_loading(tmp_path):
    root = _make_pets(tmp_path / "pets")
    for good in ["toy-faces", "toy-faces:dog", str(root), f"{root}:cat"]:
        check_source(good)
    for bad in ["toy-faces:cow", f"{root}:horse", str(tmp_path / "nowhere"), ""]:
        with pytest.raises(DatasetError):
            check_source(bad)


def test_a_colon_in_an_existing_path_is_not_a_class(tmp_path):
    folder = tmp_path / "pets:cat"
    folder.mkdir()
    _noise(20, 20).save(folder / "x.png")
    data = load_dataset(str(folder), 8)
    assert data.classes == ("pets:cat",) and len(data) == 1


# --- real photos -----------------------------------------------------------------------------


def test_real_afhq_cats():
    train = AFHQ / "train"
    if not train.is_dir():
        pytest.skip(f"AFHQ cats not found at {train} (see ../shared/data/README.md)")
    data = load_folder(train, 32)
    assert data.classes == ("cat",) and data.skipped == {}
    assert data.images.shape == (5153, 3, 32, 32)
    assert 60 < data.images.mean() < 200 and data.images.std() > 30
