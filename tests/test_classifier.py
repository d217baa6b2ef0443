"""The classifier trial: config validation, models sized for the resolution, synthetic batches from
generators, the training loop with a list-appending `report`, and the final test on real images."""
import math

import matplotlib
import numpy as np
import pytest
import torch
from conftest import Recorder
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix
from torch import nn

from trainables.classifier import (
    ClassifierConfig,
    SyntheticImages,
    accuracy_report,
    build_classifier,
    final_test,
    train_classifier,
)
from trainables.classifier.evaluate import CONFUSION_FILE
from trainables.classifier.models import classification_loss, to_input
from trainables.config import ConfigError
from trainables.training.checkpoint import CHECKPOINT_FILE, save_checkpoint
from trainables.training.evaluate import to_uint8

R = 32
Z_DIM = 3 * R * R
# SGD: with Adam, a dozen steps move the batch-norm scales faster than their running statistics follow,
# and eval-mode predictions stay constant while train-mode ones are already right.
TINY = ClassifierConfig(arch="resnet18", resolution=R, batch_size=8, steps_per_eval=6, num_evals=2,
                        optimizer="sgd", lr=0.01, device="cpu")
TOP_HALF = torch.ones(1, 3, R, R)
TOP_HALF[..., R // 2:, :] = -1


class Halves(nn.Module):
    """A stand-in generator: the top half at 0.5 * sign and the bottom half at -0.5 * sign, plus per-pixel
    noise driven by z. Classes differ in a spatial pattern, which batch norm cannot normalise away (in a
    tiny run, classes differing in brightness alone left eval-mode predictions constant) and which the
    random horizontal flip keeps."""
    def __init__(self, sign: float):
        super().__init__()
        self.sign = sign

    def forward(self, z):
        return (0.5 * self.sign * TOP_HALF + 0.2 * z.view(-1, 3, R, R)).clamp(-1, 1)


def halves_generators(signs=(1.0, -1.0)) -> dict:
    return {c: (Halves(sign), Z_DIM) for c, sign in enumerate(signs)}


def real_halves(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stand-ins for real uint8 images of the same two classes, drawn independently of the generators."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(n_per_class)
    signs = (1 - 2 * labels.float()).view(-1, 1, 1, 1)
    images = to_uint8(0.5 * signs * TOP_HALF + 0.25 * torch.randn(len(labels), 3, R, R, generator=g))
    return images.numpy(), labels.numpy()


def top_minus_bottom(images: torch.Tensor) -> torch.Tensor:
    x = to_input(images)
    return (x[..., : R // 2, :].mean((1, 2, 3)) - x[..., R // 2:, :].mean((1, 2, 3))) / 2


# --- config -------------------------------------------------------------------------------------------

def test_defaults_validate():
    cfg = ClassifierConfig()
    assert cfg.validate() is cfg
    assert cfg.generator_uris() == {"cat": "models:/cats-generator@best", "dog": "models:/dogs-generator@best"}
    assert set(ClassifierConfig.PREPARED_KEYS) == {"data", "test_data", "resolution", "generators"}


def test_generator_uris_parse_spaces_and_empty():
    assert ClassifierConfig(generators=" cat = runs:/1/g , dog=models:/d@best ").generator_uris() == \
        {"cat": "runs:/1/g", "dog": "models:/d@best"}
    assert ClassifierConfig(generators="").generator_uris() == {}
    ClassifierConfig(generators="", real_fraction=1.0).validate()  # real only needs no generators


@pytest.mark.parametrize("key,value", [
    ("arch", "vgg16"), ("real_fraction", 1.5), ("real_fraction", -0.1), ("lr", math.nan), ("lr", 1.0),
    ("weight_decay", math.inf), ("momentum", 1.0), ("label_smoothing", math.nan), ("resolution", 48),
    ("generators", "cat"), ("generators", "cat=a,cat=b"), ("generators", "cat="), ("generators", "=a"),
    ("generators", ""), ("synthetic_per_class", -1), ("batch_size", 0), ("val_fraction", 0.0),
    ("test_fraction", 1.0), ("optimizer", "rmsprop"), ("device", "tpu"),
])
def test_bad_value_names_the_key(key, value):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        ClassifierConfig(**{key: value}).validate()


# --- models ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,resolution,aux", [
    ("googlenet", 32, True), ("googlenet", 32, False), ("googlenet", 64, True), ("resnet18", 32, True),
    ("resnet18", 64, False),
])
def test_models_give_logits_per_class(arch, resolution, aux):
    torch.manual_seed(0)
    cfg = ClassifierConfig(arch=arch, resolution=resolution, aux_logits=aux)
    model = build_classifier(cfg, num_classes=3)
    x = to_input(torch.randint(0, 256, (2, 3, resolution, resolution), dtype=torch.uint8))
    loss, logits = classification_loss(model(x), torch.tensor([0, 2]))  # train mode: aux heads if any
    assert logits.shape == (2, 3) and torch.isfinite(loss)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3)


def test_stems_are_sized_for_the_resolution():
    googlenet = {r: build_classifier(ClassifierConfig(resolution=r), 2) for r in (32, 64)}
    assert isinstance(googlenet[32].maxpool1, nn.Identity)
    assert isinstance(googlenet[64].maxpool1, nn.MaxPool2d)
    resnet = {r: build_classifier(ClassifierConfig(arch="resnet18", resolution=r), 2) for r in (64, 128)}
    assert resnet[64].conv1.kernel_size == (3, 3) and resnet[64].conv1.stride == (1, 1)
    assert isinstance(resnet[64].maxpool, nn.Identity)
    assert resnet[128].conv1.stride == (2, 2) and isinstance(resnet[128].maxpool, nn.MaxPool2d)


def test_to_input_maps_uint8_to_unit_range():
    assert to_input(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]


# --- evaluation -----------------------------------------------------------------------------------------

class MeanPixel(nn.Module):
    """Predicts the class whose centre is nearest the image's mean pixel: known outputs for any input."""
    CENTRES = torch.tensor([-0.5, 0.0, 0.5])

    def forward(self, x):
        return -(x.mean((1, 2, 3))[:, None] - self.CENTRES) ** 2


def test_accuracy_report_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (101,), generator=g)
    means = MeanPixel.CENTRES[labels] + 0.3 * torch.randn(101, generator=g)  # noisy: some are misclassified
    images = to_uint8(means.view(-1, 1, 1, 1).expand(-1, 3, 4, 4))
    predicted = MeanPixel()(to_input(images)).argmax(1).numpy()

    report = accuracy_report(MeanPixel(), images.numpy(), labels.numpy(), ("a", "b", "c"), "cpu", batch_size=7)
    expected = confusion_matrix(labels.numpy(), predicted, labels=[0, 1, 2])
    np.testing.assert_array_equal(report["confusion"], expected)
    assert report["acc"] == pytest.approx(accuracy_score(labels.numpy(), predicted))
    assert 0.3 < report["acc"] < 0.95 and report["n"] == 101
    for c, name in enumerate("abc"):
        assert report[f"acc_{name}"] == pytest.approx(expected[c, c] / expected[c].sum())


# --- synthetic images -----------------------------------------------------------------------------------

def test_synthetic_batches_are_balanced_labelled_uint8_and_seeded():
    generators = halves_generators((-1.0, 0.0, 1.0))
    rng_before = torch.get_rng_state()
    images, labels = SyntheticImages(generators, 0, "cpu", seed=1).batch(10)
    assert images.dtype == torch.uint8 and images.shape == (10, 3, R, R) and labels.dtype == torch.int64
    # Each image has its class's pattern: the label is right.
    assert torch.allclose(top_minus_bottom(images), 0.5 * torch.tensor([-1.0, 0.0, 1.0])[labels], atol=0.05)
    assert torch.equal(torch.get_rng_state(), rng_before)  # never the global RNG

    synthetic = SyntheticImages(generators, 0, "cpu", seed=1)
    first = synthetic.batch(10)
    assert torch.equal(first[0], images) and torch.equal(first[1], labels)  # same seed, same batch
    counts = torch.bincount(labels, minlength=3).tolist()
    assert sorted(counts) == [3, 3, 4]
    total = sum(torch.bincount(synthetic.batch(10)[1], minlength=3) for _ in range(2)) + torch.tensor(counts)
    assert total.tolist() == [10, 10, 10]  # the remainder rotates over the classes
    assert not torch.equal(SyntheticImages(generators, 0, "cpu", seed=2).batch(10)[0], images)


def test_pool_mode_draws_only_pool_images():
    synthetic = SyntheticImages(halves_generators(), 3, "cpu", seed=0)
    for _ in range(2):
        images, labels = synthetic.batch(64)
        for c in (0, 1):
            drawn = torch.unique(images[labels == c], dim=0)
            assert len(drawn) <= 3
            assert all((synthetic.pools[c] == image).all((1, 2, 3)).any() for image in drawn)


# --- training -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data():
    train, val, test = real_halves(32, seed=1), real_halves(16, seed=2), real_halves(20, seed=3)
    return {"train_images": train[0], "train_labels": train[1], "val_images": val[0], "val_labels": val[1],
            "test": test}


def _train(cfg, data, root, generators, **kwargs):
    report = Recorder(root)
    split = {k: v for k, v in data.items() if k != "test"}
    metrics = train_classifier(cfg, report, generators=generators, **split, **kwargs)
    return report, metrics


@pytest.fixture(scope="module")
def synthetic_run(data, tmp_path_factory):
    """Synthetic-only training of TINY: the run that the resume, divergence and final-test tests reuse."""
    return _train(TINY, data, tmp_path_factory.mktemp("synthetic"), halves_generators())[0]


def test_synthetic_only_training_classifies_real_images(synthetic_run):
    metrics = synthetic_run.metrics
    assert [m["eval_period"] for m in metrics] == [1, 2]
    assert {"val_acc", "val_loss", "train_loss", "train_acc", "img_per_s", "kimg", "diverged"} <= set(metrics[0])
    assert metrics[-1]["kimg"] == pytest.approx(2 * 6 * 8 / 1000)
    assert metrics[-1]["val_acc"] > 0.9 and metrics[-1]["diverged"] == 0.0
    assert all((c / CHECKPOINT_FILE).is_file() for c in synthetic_run.checkpoints)


def test_real_only_training_needs_no_generators(data, tmp_path):
    cfg = TINY.replace(real_fraction=1.0, generators="", num_evals=1, steps_per_eval=18, reference_max_evals=1)
    report, metrics = _train(cfg, data, tmp_path, generators={})
    assert len(report.metrics) == 1 and metrics["val_acc"] > 0.9


def test_the_real_only_reference_trains_until_its_val_acc_stops_improving(data, tmp_path):
    """Its own patience and cap, not the searched trials' num_evals (1 here)."""
    patience, cap = 2, 12
    cfg = TINY.replace(real_fraction=1.0, generators="", num_evals=1, reference_patience=patience,
                       reference_max_evals=cap)
    report, _ = _train(cfg, data, tmp_path, generators={})
    accs = [m["val_acc"] for m in report.metrics]
    assert 1 + patience <= len(accs) < cap, accs
    # It ended at the first period whose last `patience` periods beat nothing before them.
    plateaued = [p for p in range(patience + 1, len(accs) + 1) if max(accs[p - patience:p]) <= max(accs[:p - patience])]
    assert plateaued and plateaued[0] == len(accs), accs
    assert report.metrics[-1]["out_of_patience"] == 1.0
    assert all(m["out_of_patience"] == 0.0 for m in report.metrics[:-1])
    capped, _ = _train(cfg.replace(reference_patience=100, reference_max_evals=3), data, tmp_path / "capped",
                       generators={})
    assert len(capped.metrics) == 3 and capped.metrics[-1]["out_of_patience"] == 0.0


def test_mixed_pool_training_runs(data, tmp_path):
    cfg = TINY.replace(arch="googlenet", real_fraction=0.5, synthetic_per_class=4, num_evals=1, steps_per_eval=2,
                       optimizer="adamw", weight_decay=0.01, label_smoothing=0.1)
    report, metrics = _train(cfg, data, tmp_path, halves_generators())
    assert metrics["diverged"] == 0.0 and math.isfinite(metrics["val_loss"])


def test_resume_continues_the_run(synthetic_run, data, tmp_path):
    torch.manual_seed(12345)  # nothing may depend on the RNG state before the restore
    report, _ = _train(TINY, data, tmp_path, halves_generators(), restore_from=synthetic_run.checkpoints[0])
    resumed, straight = report.metrics[0], synthetic_run.metrics[1]
    assert resumed["eval_period"] == 2 and resumed["kimg"] == pytest.approx(straight["kimg"])
    for key in ("train_loss", "train_acc", "val_acc", "val_loss"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5, abs=1e-6), key


def test_missing_generator_class_is_refused(data, tmp_path):
    with pytest.raises(ValueError, match="class index 1"):
        _train(TINY.replace(real_fraction=0.5), data, tmp_path, {0: (Halves(1.0), Z_DIM)})


def test_divergence_ends_the_trial_without_a_checkpoint(synthetic_run, data, tmp_path):
    # A checkpoint whose weights are NaN diverges on its first step, whatever the lr.
    broken = tmp_path / "broken"
    broken.mkdir()
    state = torch.load(synthetic_run.checkpoints[0] / CHECKPOINT_FILE, weights_only=True)
    state["state"]["model"] = {k: v.float().fill_(math.nan) if v.is_floating_point() else v
                               for k, v in state["state"]["model"].items()}
    torch.save(state, broken / CHECKPOINT_FILE)
    report, metrics = _train(TINY.replace(steps_per_eval=1), data, tmp_path, halves_generators(), restore_from=broken)
    assert metrics["diverged"] == 1.0 and metrics["val_acc"] == 0.0
    assert len(report.metrics) == 1 and report.checkpoints == []


# A ResNet-18 (the classifier's own architecture, saved as train_classifier saves it) whose weights
# make it classify a uniform image by its brightness: the predictions are known without running it.
LEVELS = (30, 128, 230)  # uint8 grey levels it classifies as class 0, 1, 2 (inputs -0.76, 0.004, 0.80)


def brightness_classifier(cfg) -> nn.Module:
    """Channel 0 carries mean_rgb(x) + 1 from the stem, through every block (each residual branch is
    zeroed by bn2's scale 0, each downsample passes channel 0 on), to the pooled feature f; the head's
    logits (1 - 2f, 0, 2f - 3) pick class 0 below f = 0.5, class 2 above 1.5 and class 1 between."""
    model = build_classifier(cfg, num_classes=3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
        model.conv1.weight[0, :, 1, 1] = 1 / 3
        model.bn1.weight[0], model.bn1.bias[0] = 1.0, 1.0
        for layer in (model.layer2, model.layer3, model.layer4):
            conv, bn = layer[0].downsample
            conv.weight[0, 0] = 1.0
            bn.weight[0] = 1.0
        model.fc.weight[:, 0] = torch.tensor([-2.0, 0.0, 2.0])
        model.fc.bias.copy_(torch.tensor([1.0, 0.0, -3.0]))
    return model


def test_final_test_writes_the_confusion_matrix(tmp_path):
    cfg = ClassifierConfig(arch="resnet18", resolution=R, device="cpu")
    model = brightness_classifier(cfg)
    with torch.no_grad():  # the stand-in does what it says, checked apart from final_test
        grey = torch.tensor(LEVELS, dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, R, R)
        assert model.eval()(to_input(grey)).argmax(1).tolist() == [0, 1, 2]
    save_checkpoint(tmp_path / "checkpoint", {"model": model}, {"step": 1})
    # (true class, predicted class) of each test image; the confusion matrix worked out by hand:
    #   true dark:  3 dark, 1 grey, 0 light   -> acc_dark  3/4
    #   true grey:  0 dark, 1 grey, 2 light   -> acc_grey  1/3
    #   true light: 1 dark, 0 grey, 4 light   -> acc_light 4/5;  acc (3 + 1 + 4) / 12
    cases = [(2, 2), (0, 0), (1, 2), (0, 1), (2, 0), (0, 0), (2, 2), (1, 1), (2, 2), (0, 0), (1, 2), (2, 2)]
    expected = np.array([[3, 1, 0], [0, 1, 2], [1, 0, 4]])
    labels = np.array([true for true, _ in cases])
    images = np.stack([np.full((3, R, R), LEVELS[predicted], np.uint8) for _, predicted in cases])
    out = tmp_path / "out"
    out.mkdir()

    metrics = final_test(cfg, tmp_path / "checkpoint", images, labels, ("dark", "grey", "light"), out)

    assert metrics == pytest.approx({"test_acc": 8 / 12, "test_n": 12, "test_acc_dark": 3 / 4,
                                     "test_acc_grey": 1 / 3, "test_acc_light": 4 / 5}, rel=1e-12)
    png = Image.open(out / CONFUSION_FILE)
    assert png.format == "PNG" and png.size == (610, 560)  # 6.1 x 5.6 in (three classes) at 100 dpi
    pixels = np.asarray(png.convert("RGB")).astype(int)
    # The cells, true classes down and predicted across, on the Blues scale from 0 to the largest count.
    blues = [np.array(matplotlib.colormaps["Blues"](count / expected.max(), bytes=True)[:3]) for count in range(5)]
    # The cell of 4 (light, light) is the one pixel block in the darkest blue; it gives the grid.
    ys, xs = np.nonzero((pixels == blues[4]).all(-1))
    size = xs.max() - xs.min() + 1
    assert size > 100 and ys.max() - ys.min() + 1 == size  # square cells
    left, top = xs.min() - 2 * size, ys.min() - 2 * size
    for (i, j), count in np.ndenumerate(expected):
        cell = pixels[top + i * size: top + (i + 1) * size, left + j * size: left + (j + 1) * size]
        corner = cell[: size // 4, : size // 4].reshape(-1, 3)  # clear of the centred count
        assert (corner == blues[count]).all(), (i, j, count, np.unique(corner, axis=0)[:3])
        # The count is written in white on the dark cells (above half the largest count), else in black.
        centre = cell[size // 3: 2 * size // 3, size // 3: 2 * size // 3].reshape(-1, 3)
        white, black = (centre >= 240).all(-1).any(), (centre <= 60).all(-1).any()
        assert (white and not black) if count > expected.max() / 2 else black, (i, j, count)
