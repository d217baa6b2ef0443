"""Classifier trials: a cat-vs-dog (any classes) classifier trained on images drawn from registered
generators, optionally mixed with real ones, selected on a real validation split and tested once
on held-out real images. The real-only trial is the reference of the Classification Accuracy
Score ratio (Ravuri & Vinyals 2019): how good the generators' images are as training data.

The winner is picked on validation accuracy among the finally tested trials, not on `test_acc`:
the test split reports, it never selects.

The test split never holds a generator's training images: once the test images are decoded, those
the classifier will test on (`test_data`, or the split carved from `data`) are compared with each
generator's recorded training images (sweeper.kinds.generators), and any overlap is refused before
Ray starts (exit 2, one line). A generator without a record is a one-line warning; every run
records the check per class (params `generator.<class>.training_images` and `.test_overlap`).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from sweeper.definition import FinalEval, Quick, SweepError
from sweeper.definition.space import space_samples
from sweeper.kinds import generators
from sweeper.kinds.base import Inputs, Kind
from sweeper.tracking.intervals import cas_verdict, wilson
from sweeper.tracking.outcomes import finite
from sweeper.tracking.registry import log_pt2_model
from sweeper.tracking.runs import default_tracking_uri
from trainables.classifier import ClassifierConfig
from trainables.data import make_imageset, prepare, source_classes, train_test_split
from trainables.training.gan import resolve_device

REAL_ONLY, SYNTHETIC_ONLY, MIXED = "real-only", "synthetic-only", "mixed"


class ClassifierKind(Kind):
    config_type = ClassifierConfig
    metric, mode = "val_acc", "max"
    final_metric, final_mode = "test_acc", "max"
    model_kind = "classifier"
    shown_metrics = ("val_acc", "val_loss", "train_loss", "kimg")
    quick = Quick(num_samples=4, config=dict(batch_size=32, steps_per_eval=20, num_evals=3),
                  final=FinalEval(top_k=1))

    def trainable(self):
        from trainables.classifier import train_classifier  # torchvision's models: only where a classifier trains

        return train_classifier

    def check(self, sweep) -> None:
        cfg = sweep.config
        classes = source_classes(cfg.data)
        if classes is not None and len(classes) < 2:
            raise SweepError(f"data: {cfg.data} has one class ({classes[0]}); a classifier needs two or more")
        if cfg.test_data and classes is not None:
            missing = sorted(set(classes) - set(source_classes(cfg.test_data) or classes))
            if missing:
                raise SweepError(f"test_data: {cfg.test_data} has no class {missing[0]!r} (the training data has it)")
        lineage = self.lineage(cfg)
        for cls, line in lineage.items():
            if classes is not None and cls not in classes:
                raise SweepError(f"generators.{cls}: the real data {cfg.data} has no class {cls!r} "
                                 f"(classes: {', '.join(classes)})")
            if line.resolution is not None and line.resolution != cfg.resolution:
                raise SweepError(f"generators.{cls}: {line.uri} (version {line.version}) makes {line.resolution} px "
                                 f"images; the classifier's resolution is {cfg.resolution}")
        _check_every_class_has_a_generator(sweep, classes, lineage)
        if not any(sweep.trial_config(point).real_fraction == 1.0 for point in sweep.warm_points):
            raise SweepError("warm_start: a classifier sweep needs the real-only point {'real_fraction': 1.0} "
                             "(the reference of the CAS ratio); add it and let the space include 1.0")

    @staticmethod
    def lineage(cfg) -> dict:
        try:
            return {cls: generators.resolve(cls, uri, default_tracking_uri())
                    for cls, uri in cfg.generator_uris().items()}
        except generators.GeneratorError as e:
            raise SweepError(str(e)) from None

    def prepare(self, sweep):
        cfg = sweep.config
        data = prepare(cfg.data, cfg.resolution, seed=cfg.seed)
        print(data.summary(), flush=True)
        if cfg.test_data:
            test = prepare(cfg.test_data, cfg.resolution, seed=cfg.seed)
            print(test.summary(), flush=True)
            test_set, train_pool = _aligned(test.data, data.data.classes), data.data
        else:
            pool, held_out = train_test_split(data.data, cfg.test_fraction)
            train_pool, test_set = _subset(data.data, pool), _subset(data.data, held_out)
        lineage = self.lineage(cfg)
        overlap_checks = _refuse_memorised_test_images(cfg, test_set, lineage)
        train, val = train_test_split(train_pool, cfg.val_fraction)
        return {"train": _subset(train_pool, train), "val": _subset(train_pool, val), "test": test_set,
                "lineage": lineage, "overlap_checks": overlap_checks, "key": data.key}

    def inputs(self, sweep, prepared, available: dict) -> Inputs:
        cfg, train, val, test = sweep.config, prepared["train"], prepared["val"], prepared["test"]
        lineage = prepared["lineage"]
        index = {cls: i for i, cls in enumerate(train.classes)}
        params = {"classes": ",".join(train.classes), "n_train": len(train), "n_val": len(val), "n_test": len(test)}
        for cls, line in lineage.items():
            params.update(line.params(cls))
            params.update(prepared["overlap_checks"][cls])
        return Inputs(
            trial={"train_images": train.images, "train_labels": train.labels, "val_images": val.images,
                   "val_labels": val.labels, "tracking_uri": default_tracking_uri(),
                   "generators": {index[cls]: (line.pinned_uri, line.z_dim) for cls, line in lineage.items()}},
            final={"test_images": test.images, "test_labels": test.labels, "classes": train.classes},
            params=params,
            parent_tags={"sweeper.dataset_fingerprint": train.fingerprint, "sweeper.dataset_cache_key": prepared["key"]},
            footing={"sweeper.test_fingerprint": test.fingerprint, "sweeper.resolution": cfg.resolution,
                     "sweeper.classes": ",".join(train.classes)},
            measured_on=f"{len(test)} held-out real test images",
            lines=[f"real images: {len(train)} train, {len(val)} validation, {len(test)} test "
                   f"({', '.join(train.classes)})",
                   *(f"generator for {cls}: {line.pinned_uri} (from {line.uri}; fid_final {line.fid_final} "
                     f"{line.fid_extractor})" for cls, line in lineage.items())])

    def trial_kwargs(self, cfg, shared: dict) -> dict:
        kwargs = {k: shared[k] for k in ("train_images", "train_labels", "val_images", "val_labels")}
        device = resolve_device(cfg.device)
        # Loaded once per trial, on its device; a real-only trial needs none.
        kwargs["generators"] = {} if cfg.real_fraction >= 1 else {
            c: (generators.load(uri, shared["tracking_uri"], device), z_dim)
            for c, (uri, z_dim) in shared["generators"].items()}
        return kwargs

    def group(self, cfg, warm_start: bool) -> str:
        return REAL_ONLY if cfg.real_fraction >= 1 else SYNTHETIC_ONLY if cfg.real_fraction <= 0 else MIXED

    def winner_by(self, sweep) -> tuple[str, str]:
        return "best_val_acc", "max"

    def measure(self, cfg, checkpoint_dir: str, shared: dict) -> tuple[dict, dict]:
        with tempfile.TemporaryDirectory() as out:
            from trainables.classifier import final_test

            metrics = final_test(cfg, checkpoint_dir, shared["test_images"], shared["test_labels"],
                                 shared["classes"], out)
            files = {p.name: p.read_bytes() for p in Path(out).glob("*.png")}
        low, high = wilson(metrics["test_acc"], int(metrics["test_n"]))
        return {**metrics, "test_acc_low": low, "test_acc_high": high}, files

    def summarise(self, sweep, table) -> tuple[dict, list[str]]:
        """The CAS measured above chance, each accuracy with its interval (sweeper.tracking.intervals);
        no score where the real-only reference or the synthetic-only classifier is at chance."""
        synthetic, real = _tested(table, SYNTHETIC_ONLY), _tested(table, REAL_ONLY)
        if synthetic is None or real is None:
            metrics = {f"test_acc_{group.replace('-', '_')}": float(row["test_acc"])
                       for group, row in ((SYNTHETIC_ONLY, synthetic), (REAL_ONLY, real)) if row is not None}
            missing = "synthetic-only (real_fraction=0)" if synthetic is None else "real-only (real_fraction=1)"
            return metrics, [f"Classification Accuracy Score: not measured, no {missing} trial reached the final "
                             f"evaluation"]
        # On a balanced test set a constant guess scores 1/classes.
        chance = 1 / max(2, len(sweep.config.generator_uris()))
        return cas_verdict(float(synthetic["test_acc"]), float(real["test_acc"]), chance, int(synthetic["test_n"]),
                           int(real["test_n"]), capped=_capped(real, sweep.config))

    def log_model(self, tracking, run_id: str, cfg, checkpoint_dir: str, name: str) -> str:
        classes = tracking_classes(tracking)
        from trainables.classifier.evaluate import load_classifier

        model = load_classifier(cfg, checkpoint_dir, len(classes)).eval()
        # Inputs as the model takes them: float in [-1, 1] (trainables.classifier.models.to_input).
        example = np.random.default_rng(0).uniform(-1, 1, (2, 3, cfg.resolution, cfg.resolution)).astype(np.float32)
        return log_pt2_model(tracking, run_id, model, example, name="classifier", registered_name=name)

    def describe(self, sweep) -> list[str]:
        cfg = sweep.config
        return [f"classifier: {cfg.arch} at {cfg.resolution} px on {cfg.data}; selected on val_acc, test_acc "
                f"once on {cfg.test_data or f'{cfg.test_fraction:.0%} of the data'}",
                *(f"generator for {cls}: {line.uri} -> {line.pinned_uri} (fid_final {line.fid_final}, "
                  f"{line.fid_extractor}, {line.resolution} px)" for cls, line in self.lineage(cfg).items())]


def tracking_classes(tracking) -> list[str]:
    return dict(tracking.child_params)["classes"].split(",")


def _capped(reference, cfg) -> bool:
    """Whether the reference's cap ended it (it had not yet gone reference_patience periods without
    improving)."""
    return int(reference.get("eval_periods", 0)) >= cfg.reference_max_evals


def _tested(table, group: str):
    """The table row of the group's trial with the best validation accuracy among those tested."""
    if "test_acc" not in table:
        return None
    rows = table[(table["group"] == group) & finite(table["test_acc"])]
    if rows.empty:
        return None
    return rows.sort_values("best_val_acc", ascending=False, kind="stable").iloc[0]


def _check_every_class_has_a_generator(sweep, classes, lineage) -> None:
    if classes is None:
        return
    configs = [("config", sweep.config)] + [(where, sweep.trial_config(p)) for where, p in space_samples(sweep.space)]
    for where, cfg in configs:
        missing = [c for c in classes if c not in lineage]
        if cfg.real_fraction < 1 and missing:
            raise SweepError(f"generators: no generator for class {missing[0]!r}, needed where real_fraction < 1 "
                             f"({where}: real_fraction={cfg.real_fraction})")


def _refuse_memorised_test_images(cfg, test, lineage: dict) -> dict:
    """Raises SweepError where test images are among a generator's recorded training images; else
    per class the params that record the check ("not recorded" where the generator has no record)."""
    checks, found = {}, []
    for cls, line in lineage.items():
        recorded = generators.training_images(cls, line, default_tracking_uri())
        unusable = _why_unchecked(line, recorded, cfg.resolution)
        if unusable:
            print(f"sweeper: warning: generators.{cls}: {line.pinned_uri} {unusable}: the test split could not be "
                  f"checked for its training images", file=sys.stderr, flush=True)
            checks[cls] = {f"generator.{cls}.training_images": len(recorded.digests) if recorded else "not recorded",
                           f"generator.{cls}.test_overlap": "not checked"}
            continue
        shared = generators.overlap(test.images, recorded)
        checks[cls] = {f"generator.{cls}.training_images": len(recorded.digests),
                       f"generator.{cls}.test_overlap": shared}
        if shared:
            found.append((shared, f"generators.{cls} ({line.pinned_uri}, trained on {line.data})"))
    if found:
        where = (f"test_data {cfg.test_data}" if cfg.test_data
                 else f"the test split carved from data {cfg.data} (test_fraction {cfg.test_fraction})")
        (n, generator), *more = found
        counts = f"{n} are training images of {generator}" + "".join(f", {m} of {other}" for m, other in more)
        raise SweepError(f"{where}: of its {len(test)} test images, {counts}; a CAS on them would reward "
                         f"memorisation: set test_data to images no generator was trained on")
    return checks


def _why_unchecked(line, recorded, resolution: int) -> str | None:
    if recorded is None:
        return (f"has no record of its training images (no {generators.TRAINING_IMAGES} in its run {line.run_id}: "
                f"registered before sweeper kept one)")
    if recorded.resolution != resolution:
        return f"recorded its training images at {recorded.resolution} px, the classifier tests at {resolution} px"
    return None


def _subset(data, indices):
    return make_imageset(data.images[indices], data.labels[indices], data.classes)


def _aligned(test, classes):
    """The test set with its labels renumbered to the training set's class order."""
    order = {cls: i for i, cls in enumerate(classes)}
    keep = np.isin(np.array(test.classes)[test.labels], list(classes))
    labels = np.array([order[test.classes[label]] for label in test.labels[keep]], dtype=np.int64)
    return make_imageset(test.images[keep], labels, classes)


CLASSIFIER = ClassifierKind()
