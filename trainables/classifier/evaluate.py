"""Measuring a classifier on real images: accuracy, per-class accuracy, the confusion matrix and its image."""
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from trainables.classifier.models import build_classifier, to_input
from trainables.training.checkpoint import CHECKPOINT_FILE
from trainables.training.gan import resolve_device

CONFUSION_FILE = "confusion_matrix.png"


@torch.no_grad()
def predict(model: nn.Module, images, labels, device, batch_size: int = 256) -> tuple[torch.Tensor, float]:
    """(predicted classes [N] on `device`, mean cross-entropy) of uint8 images (numpy or torch, on any
    device), batch by batch in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    predictions, loss_sum = [], torch.zeros((), device=device)
    try:
        for i in range(0, len(images), batch_size):
            x, y = (_rows(a, i, i + batch_size).to(device) for a in (images, labels))
            logits = model(to_input(x))
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            predictions.append(logits.argmax(1))
    finally:
        model.train(was_training)
    return torch.cat(predictions), loss_sum.item() / len(images)


def _rows(array, start: int, stop: int) -> torch.Tensor:
    # A copy for numpy: prepared sets are read-only memory maps, which torch.from_numpy warns about.
    return array[start:stop] if isinstance(array, torch.Tensor) else torch.tensor(array[start:stop])


def accuracy_report(model: nn.Module, images_uint8, labels, classes, device, batch_size: int = 256) -> dict:
    """`acc`, `acc_<class>` (nan for a class without images), `confusion` (counts [true, predicted])
    and `n`."""
    predicted = predict(model, images_uint8, labels, device, batch_size)[0].cpu().numpy()
    true = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    k = len(classes)
    confusion = np.bincount(true * k + predicted, minlength=k * k).reshape(k, k)
    report = {"acc": float(np.trace(confusion) / len(true)), "confusion": confusion, "n": len(true)}
    with np.errstate(invalid="ignore"):
        per_class = np.diag(confusion) / confusion.sum(axis=1)
    report.update({f"acc_{name}": float(acc) for name, acc in zip(classes, per_class)})
    return report


def save_confusion_png(confusion: np.ndarray, classes, path, title: str) -> None:
    """Counts in the cells, true classes down, predicted across."""
    fig = Figure(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2))  # no pyplot: no global backend
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes, xlabel="predicted",
           ylabel="true", title=title)
    dark = confusion > confusion.max() / 2
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if dark[i, j] else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def load_classifier(cfg, directory, num_classes: int) -> nn.Module:
    """The checkpoint's classifier, on the CPU."""
    state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model = build_classifier(cfg, num_classes)
    model.load_state_dict(state["state"]["model"])
    return model


def final_test(cfg, checkpoint_dir, test_images, test_labels, classes, out_dir) -> dict:
    """`test_acc`, `test_acc_<class>` and `test_n` of a checkpoint's classifier on the test split;
    writes confusion_matrix.png into `out_dir`."""
    device = resolve_device(cfg.device)
    model = load_classifier(cfg, checkpoint_dir, len(classes)).to(device)
    report = accuracy_report(model, test_images, test_labels, classes, device)
    title = f"test accuracy {report['acc']:.3f} (n={report['n']})"
    save_confusion_png(report["confusion"], classes, Path(out_dir) / CONFUSION_FILE, title)
    metrics = {"test_acc": report["acc"], "test_n": report["n"]}
    metrics.update({f"test_acc_{name}": report[f"acc_{name}"] for name in classes})
    return metrics
