"""The classifier training loop, written as commented paragraphs like trainables/training/gan.py.

`train_classifier` runs eval periods of `steps_per_eval` steps on batches mixing real and generated
images; after each it measures the real validation split, writes a checkpoint into a fresh directory
and calls `report(metrics, checkpoint_dir)`. Ray wraps `report` around `tune.report`; tests pass a
list-appending function.
"""
import math
import tempfile
import time

import numpy as np
import torch

from trainables.classifier.config import ClassifierConfig
from trainables.classifier.evaluate import predict
from trainables.classifier.models import build_classifier, classification_loss, to_input
from trainables.classifier.synthetic import SyntheticImages
from trainables.training.checkpoint import load_checkpoint, save_checkpoint
from trainables.training.gan import Report, resolve_device

SYNTHETIC_SEED_OFFSET = 1  # the generated images draw from another stream than the real ones


class MixedBatches:
    """`round(batch_size * real_fraction)` real images sampled from the uint8 training set (moved to
    the device once), the rest from `synthetic`; the whole batch randomly mirrored. Its own seeded
    generator, saved in checkpoints, drives the sampling."""

    def __init__(self, cfg: ClassifierConfig, images: np.ndarray, labels: np.ndarray,
                 synthetic: SyntheticImages | None, device: torch.device):
        self.n_real = round(cfg.batch_size * cfg.real_fraction)
        self.n_synthetic = cfg.batch_size - self.n_real
        if self.n_real and not len(images):
            raise ValueError(f"real_fraction {cfg.real_fraction} needs real training images, got none")
        if self.n_real:
            self.images, self.labels = torch.tensor(images, device=device), torch.tensor(labels, device=device)
        self.synthetic = synthetic
        self.rng = torch.Generator(device=device).manual_seed(cfg.seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images [batch_size, 3, R, R], int64 labels [batch_size]) on the device."""
        parts = []
        if self.n_real:
            idx = torch.randint(len(self.images), (self.n_real,), device=self.rng.device, generator=self.rng)
            parts.append((self.images[idx], self.labels[idx]))
        if self.n_synthetic:
            parts.append(self.synthetic.batch(self.n_synthetic))
        images, labels = (torch.cat(p) for p in zip(*parts))
        flip = torch.rand(len(images), device=self.rng.device, generator=self.rng) < 0.5
        return torch.where(flip[:, None, None, None], images.flip(3), images), labels

    def state_dict(self) -> dict:
        synthetic = None if self.synthetic is None else self.synthetic.state_dict()
        return {"rng": self.rng.get_state(), "synthetic": synthetic}

    def load_state_dict(self, state: dict) -> None:
        self.rng.set_state(state["rng"])
        if self.synthetic is not None:
            self.synthetic.load_state_dict(state["synthetic"])


def build_synthetic(cfg: ClassifierConfig, generators: dict, num_classes: int,
                    device: torch.device) -> SyntheticImages | None:
    """The generated part of the batches; None when batches are all real (`generators` may then be {})."""
    if cfg.batch_size - round(cfg.batch_size * cfg.real_fraction) == 0:
        return None
    for c in range(num_classes):
        if c not in generators:
            raise ValueError(f"no generator for class index {c} (real_fraction {cfg.real_fraction} < 1)")
    for c in generators:
        if c not in range(num_classes):
            raise ValueError(f"a generator for class index {c}, but the real labels have {num_classes} classes")
    return SyntheticImages(generators, cfg.synthetic_per_class, device, cfg.seed + SYNTHETIC_SEED_OFFSET)


def build_optimizer(cfg: ClassifierConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def train_classifier(cfg: ClassifierConfig, report: Report, *, train_images: np.ndarray, train_labels: np.ndarray,
                     val_images: np.ndarray, val_labels: np.ndarray, generators: dict,
                     restore_from: str | None = None) -> dict:
    """Trains until `cfg.evals()` eval periods are done (or the loss diverges; or, for the real-only
    reference, until its val_acc has not improved for `reference_patience` periods); returns the
    last metrics.

    Images are uint8 [N, 3, R, R]; labels are class indices, and the classes are 0 .. the largest real
    label. `generators` maps a class index to (generator, z_dim), as SyntheticImages takes them.
    """
    cfg = cfg.validate()
    device = resolve_device(cfg.device)
    if not len(val_images):
        raise ValueError("the validation split is empty")
    num_classes = 1 + int(max(np.max(labels) for labels in (train_labels, val_labels) if len(labels)))

    # Model and optimiser, initialised from the seed alone so a trial is reproducible from its config.
    torch.manual_seed(cfg.seed)
    model = build_classifier(cfg, num_classes).to(device)
    opt = build_optimizer(cfg, model)

    # Batches are drawn on the device (a synthetic pool is drawn here, once); the validation split
    # moves there once too.
    batches = MixedBatches(cfg, train_images, train_labels, build_synthetic(cfg, generators, num_classes, device),
                           device)
    val_x, val_y = torch.tensor(val_images, device=device), torch.tensor(val_labels, device=device)

    # Resume: weights, optimiser moments, the batch streams, the global RNG and counters, so the run
    # continues where the checkpoint left it.
    stateful = {"model": model, "opt": opt, "batches": batches}
    # The reference's patience counts in `progress`, so that a resumed reference goes on counting.
    progress = {"eval_period": 0, "step": 0, "kimg": 0.0, "best_val_acc": -1.0, "periods_since_best": 0}
    if restore_from is not None:
        progress = {**progress, **load_checkpoint(restore_from, stateful)}

    metrics = {}
    while progress["eval_period"] < cfg.evals() and not _out_of_patience(cfg, progress):
        # Train one eval period.
        metrics, trained = _train_period(cfg, model, opt, batches, progress)
        progress = {**progress, **trained}  # the patience counts carry on

        # Divergence ends the trial cleanly: report it (no checkpoint of a broken state) and stop.
        if not math.isfinite(metrics["train_loss"]):
            metrics.update(val_acc=0.0, val_loss=float("inf"), diverged=1.0)
            report(metrics, None)
            return metrics

        # Validate, checkpoint and report in one directory that the reporter takes over.
        predicted, val_loss = predict(model, val_x, val_y, device)
        metrics.update(val_acc=(predicted == val_y).float().mean().item(), val_loss=val_loss, diverged=0.0)
        progress = _count_patience(progress, metrics["val_acc"])
        if cfg.is_reference:  # the reference's last report says whether patience ended it (else its cap)
            metrics["out_of_patience"] = float(_out_of_patience(cfg, progress))
        with tempfile.TemporaryDirectory(prefix="sweeper-ckpt-") as directory:
            save_checkpoint(directory, stateful, progress)
            report(metrics, directory)
    return metrics


def _count_patience(progress: dict, val_acc: float) -> dict:
    better = val_acc > progress["best_val_acc"]
    return {**progress, "best_val_acc": max(val_acc, progress["best_val_acc"]),
            "periods_since_best": 0 if better else progress["periods_since_best"] + 1}


def _out_of_patience(cfg: ClassifierConfig, progress: dict) -> bool:
    return cfg.is_reference and progress["periods_since_best"] >= cfg.reference_patience


def _train_period(cfg: ClassifierConfig, model: torch.nn.Module, opt: torch.optim.Optimizer,
                  batches: MixedBatches, progress: dict) -> tuple[dict, dict]:
    """steps_per_eval steps; loss and accuracy are summed on the device and read once at the end."""
    sums = torch.zeros(2, device=batches.rng.device)
    start = time.perf_counter()
    for _ in range(cfg.steps_per_eval):
        images, labels = batches.next()
        loss, logits = classification_loss(model(to_input(images)), labels, cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums += torch.stack([loss.detach(), (logits.argmax(1) == labels).float().mean()])
    train_loss, train_acc = (sums / cfg.steps_per_eval).tolist()
    seconds = time.perf_counter() - start
    images_seen = cfg.steps_per_eval * cfg.batch_size
    progress = {"eval_period": progress["eval_period"] + 1, "step": progress["step"] + cfg.steps_per_eval,
                "kimg": progress["kimg"] + images_seen / 1000}
    metrics = {"eval_period": progress["eval_period"], "kimg": progress["kimg"], "train_loss": train_loss,
               "train_acc": train_acc, "img_per_s": images_seen / seconds}
    return metrics, progress
