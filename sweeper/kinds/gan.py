"""GAN trials: the data and its FID reference statistics prepared once, FID per eval, `fid_select`
and `fid_final` on the best checkpoints (picked on the one, reported on the other: two independent
draws, see sweeper.driver.final), the winner's generator registered as `<sweep>-generator`."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np

from sweeper.definition import Promotion, Quick, Range
from sweeper.kinds.base import Inputs, Kind
from sweeper.kinds.generators import TRAINING_IMAGES, training_images_record
from sweeper.kinds.refstats import (
    MIN_TO_SPLIT,
    REPORT,
    SELECT,
    half_indices,
    pass_resources,
    reference_stats_in_one_task,
)
from sweeper.kinds.shipped import ShippedFile, ship
from sweeper.tracking.outcomes import baseline_gain, baseline_trial, finite
from sweeper.tracking.registry import log_pt2_model
from trainables.config import GANConfig
from trainables.data import check_source, prepare
from trainables.metrics import extractor_by_name, proxy_spec, standard_spec
from trainables.training.checkpoint import load_generator
from trainables.training.evaluate import final_fid_kid
from trainables.training.gan import resolve_device, train_gan
from trainables.training.mutation import MUTABLE_KEYS


class GANKind(Kind):
    config_type = GANConfig
    metric, mode = "fid", "min"
    final_metric, final_mode = "fid_final", "min"
    select_metric = "fid_select"  # the final evaluation picks by it, on a draw independent of fid_final's
    model_kind = "generator"
    shown_metrics = ("fid", "kid", "kimg", "img_per_s")
    # GAN trials pay off late (LR schedules, EMA): the promising ones must reach a long horizon.
    scheduler = Promotion()
    # D steps per G step (a period is G steps), images per step, the networks' size.
    cost_keys = ("n_critic", "batch_size", "g_width", "d_width", "arch")
    # The footprint probe (sweeper.search.footprint): 20 G steps reach the steady state (optimiser moments,
    # cuDNN workspaces, a CUDA graph captured after its warm-up steps); the FID at the sweep's own
    # fid_samples, whose batches set the evaluation's peak.
    footprint_changes = {"steps_per_eval": 20}
    # 9 periods of 135 G steps at batch 16: Promotion's rungs at 2 and 6 periods cut at 270 and 810 G
    # steps, and the finalist trains to 1,215. Faces need steps, not batch (a step at batch 16 costs
    # about half one at 32): the warm start draws face shapes from ~800 G steps, and a cut before that
    # (rung 6 at 600 steps) let a texture's early dip win. 4:14 on 2 cores with a fresh cache
    # (bench/RESULTS.md, "The README's quick sweep: faces at 1,215 G steps").
    quick = Quick(num_samples=6, config=dict(
        resolution=32, g_width=16, d_width=16, batch_size=16, steps_per_eval=135, num_evals=9,
        # Two halves of the real images and two final draws (sweeper.driver.final) at half the old
        # counts: the standard Inception (~5-9 img/s on 2 CPU cores) sees as many images as before.
        fid_samples=512, ref_samples=256, final_fid_samples=128))

    # What a restore applies to the optimisers, the step and the EMA (trainables.training.mutation).
    mutable_keys = tuple(sorted(MUTABLE_KEYS))

    def mutations(self, config) -> dict:
        """The learning rates over the range the shipped spaces search, beta1 between Gulrajani et
        al.'s 0 and Radford et al.'s 0.5, the critic's steps, the EMA decay (off, ~1k or ~10k G steps)
        and, where the loss has one, the gradient penalty's weight around its usual 10."""
        mutations = {"g_lr": Range(1e-5, 1e-3, log=True), "d_lr": Range(1e-5, 1e-3, log=True),
                     "beta1": [0.0, 0.5], "n_critic": [1, 2, 5], "ema_decay": [0.0, 0.999, 0.9999]}
        if config.loss == "wgan-gp":
            mutations["gp_weight"] = Range(1.0, 100.0, log=True)
        return mutations

    def bounds(self, config) -> dict:
        """The continuous part of `mutations` (PB2 proposes any value inside a bound)."""
        return {key: (values.low, values.high) for key, values in self.mutations(config).items()
                if isinstance(values, Range)} | {"beta1": (0.0, 0.9)}

    def trainable(self):
        return train_gan

    def check(self, sweep) -> None:
        check_source(sweep.config.data)

    def prepare(self, sweep):
        """The data, decoded once. Fewer than MIN_IMAGES usable images is a DatasetError (the FID
        reference statistics need a covariance), raised before anything is cached or started;
        fewer than the batch size or `ref_samples` trains, with a warning on stderr (see
        `too_little_data`)."""
        # Once per sweep, before Ray starts (the decode pool forks only while the process is
        # single-threaded). Trials get the uint8 array through Ray's object store.
        prepared = prepare(sweep.config.data, sweep.config.resolution, seed=sweep.config.seed, min_images=MIN_IMAGES)
        print(prepared.summary(), flush=True)
        for warning in too_little_data(len(prepared.data), sweep.config):
            print(f"sweeper: warning: {warning}", file=sys.stderr, flush=True)
        return prepared

    def inputs(self, sweep, prepared, available: dict) -> Inputs:
        cfg, dataset = sweep.config, prepared.data
        per_eval, standard = _extractors(cfg, available)
        # The weights travel by object store: a trial on another node never sees this machine's path.
        weights = ship(standard.weights_path)
        # FID reference statistics, in one Ray task (a trial's GPU share, or a whole node without
        # GPUs): the driver never builds the network itself. The real images are split in two disjoint
        # halves (sweeper.kinds.refstats): what selects (the per-eval FID, fid_select) is measured by
        # the per-eval extractor against the SELECT half, the reported fid_final by the standard one
        # against the REPORT half.
        resources = pass_resources(sweep.resources.per_trial(available.get("GPU", 0)))
        eval_stats, final_stats = reference_stats_in_one_task(
            dataset.images, dataset.fingerprint,
            [(TrialExtractor.of(per_eval, weights, cfg.device), cfg.ref_samples, SELECT),
             (TrialExtractor.of(standard, weights, cfg.device), cfg.ref_samples, REPORT)], resources=resources)
        per_eval_weights = weights if per_eval == standard else None
        return Inputs(
            trial={"images": dataset.images, "ref_stats": eval_stats, "extractor": per_eval.name,
                   "weights": per_eval_weights, "fid_precision": standard.precision,
                   "weights_sha256": per_eval.weights_sha256},
            # fid_select is the per-eval FID measured again (other z): the number that ranked the trials,
            # so picking by it picks what the sweep was steering towards. On a CPU that is the proxy on
            # as many images as it likes: at the quick size the standard FID on 128 images, dominated by
            # its small-sample bias, ranked a noise texture above face shapes that the proxy put far
            # ahead (bench/RESULTS.md, "The README's quick sweep at 800 G steps").
            final={"select_stats": eval_stats, "select_extractor": per_eval.name, "select_weights": per_eval_weights,
                   "select_weights_sha256": per_eval.weights_sha256,
                   "final_stats": final_stats, "final_extractor": standard.name,
                   "final_weights": weights, "final_weights_sha256": standard.weights_sha256},
            tags={"sweeper.fid_extractor": per_eval.name, "sweeper.fid_precision": standard.precision},
            parent_tags={"sweeper.fid_final_extractor": standard.name, "sweeper.fid_select_extractor": per_eval.name,
                         "sweeper.dataset_fingerprint": dataset.fingerprint, "sweeper.dataset_cache_key": prepared.key},
            final_tags={"sweeper.fid_final_extractor": standard.name, "sweeper.fid_select_extractor": per_eval.name},
            footing={**extractor_footing(standard), "sweeper.data_fingerprint": dataset.fingerprint,
                     "sweeper.resolution": cfg.resolution, "sweeper.final_fid_samples": cfg.final_fid_samples,
                     "sweeper.ref_samples": final_stats.n_samples,
                     # fid_final against the REPORT half of the real images, not chosen on: not comparable
                     # with versions measured before (against images that also chose, and biased low).
                     "sweeper.fid_final_draw": FID_FINAL_DRAW},
            measured_on=_measured_on(per_eval, standard, cfg, eval_stats, final_stats),
            # Per-image digests of the training images: a classifier refuses test images among them.
            lineage={TRAINING_IMAGES: training_images_record(dataset)},
            lines=[_extractor_line(per_eval, standard, cfg)])

    def run_params(self, cfg) -> dict:
        # What ran, not what was asked: "auto" and bf16 resolve per machine (bf16 only on CUDA).
        device = resolve_device(cfg.device)
        return {**super().run_params(cfg), "device": device.type,
                "mixed_precision": cfg.mixed_precision and device.type == "cuda"}

    def trial_kwargs(self, cfg, shared: dict) -> dict:
        extractor = extractor_by_name(shared["extractor"], resolve_device(cfg.device),
                                      weights_path=_local(shared["weights"]), precision=shared.get("fid_precision"),
                                      weights_sha256=shared.get("weights_sha256"))
        return {"images": shared["images"], "ref_stats": shared["ref_stats"], "extractor": extractor}

    def measure(self, cfg, checkpoint_dir: str, shared: dict) -> tuple[dict, dict]:
        """One draw of the final evaluation (`shared["final_draw"]`, sweeper.driver.final):
        "select" -> fid_select/kid_select by the per-eval extractor against the SELECT half's
        statistics; "report" (the default) -> fid_final/kid_final by the standard extractor against
        the REPORT half's. Each with its own z (see
        trainables.training.evaluate.DRAWS) and a record of the draw as `<draw>_draw.json`."""
        draw = shared.get("final_draw", REPORT)
        part = "select" if draw == SELECT else "final"  # fid_select: the per-eval extractor; fid_final: the standard
        stats = shared[f"{part}_stats"]
        features = extractor_by_name(shared[f"{part}_extractor"], resolve_device(cfg.device),
                                     weights_path=_local(shared[f"{part}_weights"]),
                                     precision=shared.get("fid_precision"),
                                     weights_sha256=shared.get(f"{part}_weights_sha256"))
        metrics, record = final_fid_kid(cfg, checkpoint_dir, features, stats, draw)
        record = {"draw": draw, "metrics": metrics, **record, "extractor": features.name,
                  "real_images": stats.n_samples, "real_half": stats.half, "reference_key": stats.key}
        return metrics, {f"{draw}_draw.json": json.dumps(record, indent=2).encode()}

    def winner_by(self, sweep) -> tuple[str, str]:
        # Among the trials with a fid_final (each group's pick), the best by the selection draw: the
        # reported fid_final took no part in choosing (sweeper.driver.final).
        return self.select_metric, self.final_mode

    def summarise(self, sweep, table) -> tuple[dict, list[str]]:
        baseline, gain = baseline_gain(table, "fid_final", "min")
        metrics = {k: v for k, v in (("baseline_fid_final", baseline), ("fid_final_gain_over_baseline", gain))
                   if v is not None}
        if baseline is None or gain is None:
            return metrics, []
        verdict = (f"the best searched trial is {gain:.2f} better" if gain > 0 else
                   f"the search did NOT beat it: its best trial is {-gain:.2f} worse")
        # The same two trials on the selection draw (other z, the other half of the real images): where
        # the draws disagree on which is better, the difference is inside the noise of one draw.
        _, again = baseline_gain(table[finite(table["fid_final"])], "fid_select", "min")
        disagree = again is not None and (again > 0) != (gain > 0)
        if again is not None:
            metrics["fid_gain_within_noise"] = float(disagree)
        noise = (f"; inside the noise: on the independent selection draw (fid_select) it is {abs(again):.2f} "
                 f"{'better' if again > 0 else 'worse'}" if disagree else
                 "; the selection draw (fid_select) agrees" if again is not None else "")
        trial, config = baseline_trial(sweep, table, "fid_final", "min")
        return metrics, [f"hand-tuned baseline (warm start): fid_final {baseline:.2f} (trial {trial}); "
                         f"{verdict}{noise}", *([f"  trial {trial} = {config}"] if config else [])]

    def log_model(self, tracking, run_id: str, cfg, checkpoint_dir: str, name: str) -> str:
        """The checkpoint's (EMA) generator, saved as `pt2` (torch.export): loading it back unpickles
        nothing but tensors."""
        G = load_generator(cfg, checkpoint_dir).eval()
        # Batch of 2: torch.export specialises a batch of 1 to a constant; this keeps the batch dynamic.
        example = np.random.default_rng(0).standard_normal((2, cfg.z_dim)).astype(np.float32)
        return log_pt2_model(tracking, run_id, G, example, name="generator", registered_name=name)

    def describe(self, sweep) -> list[str]:
        cfg = sweep.config
        return [f"FID per eval: {cfg.eval_extractor} extractor on {cfg.fid_samples} samples; the final evaluation "
                f"picks by fid_select and reports fid_final, each on {cfg.final_fid_samples} samples (other z) "
                f"against up to {cfg.ref_samples} real images of its own half of the data"]


MIN_IMAGES = 2  # the real images' feature covariance (FID) needs two
# The footing tag of fid_final's draw: the REPORT half of the real images, z of its own; the winner
# picked on an independent draw (sweeper.driver.final). Change it when what fid_final means changes.
FID_FINAL_DRAW = "report-half-v1"

NO_WEIGHTS = "none"  # the weights tag of an extractor without a weights file (its name fixes its features)


def extractor_footing(spec) -> dict:
    """The registry tags that make two fid_final numbers' features the same: the extractor's name, the
    full sha256 of its weights file, its precision. Any of them different (a bf16 FID, another file
    under the name inception-v3-compat): another footing, never compared (sweeper.tracking.registry)."""
    return {"sweeper.fid_final_extractor": spec.name,
            "sweeper.fid_final_weights_sha256": spec.weights_sha256 or NO_WEIGHTS,
            "sweeper.fid_final_precision": spec.precision}


def too_little_data(n: int, cfg: GANConfig) -> list[str]:
    """What a dataset of `n` images quietly changes, though training still works: batches are drawn
    with replacement (so they repeat images) and the reference statistics use every image there is."""
    warnings = []
    if n < cfg.batch_size:
        warnings.append(f"data {cfg.data}: {n} images, fewer than batch_size {cfg.batch_size}: "
                        f"every batch repeats images")
    select, report = len(half_indices(n, SELECT)), len(half_indices(n, REPORT))
    if select < cfg.ref_samples:
        warnings.append(f"data {cfg.data}: {n} images, fewer than ref_samples {cfg.ref_samples} in each half "
                        f"(one half selects, the other reports fid_final): the FID reference statistics use "
                        f"{select} and {report}")
    if n < MIN_TO_SPLIT:
        warnings.append(f"data {cfg.data}: {n} images, too few to split into two halves of 2: fid_final is "
                        f"measured against the same real images as the numbers that pick the winner")
    return warnings


def _local(shipped) -> str | None:
    return shipped.local_path() if shipped is not None else None


@dataclass(frozen=True)
class TrialExtractor:
    """An extractor as a trial's (or a Ray task's) process builds it: on that process's device, with
    the weights fetched from the object store onto its node."""
    name: str
    dims: int
    precision: str
    weights: ShippedFile | None
    device: str  # the config's device: "auto" = CUDA where the process was given a GPU
    weights_sha256: str | None = None  # what the shipped weights' bytes must hash to (and the refstats key)

    @classmethod
    def of(cls, spec, weights: ShippedFile | None, device: str) -> TrialExtractor:
        return cls(spec.name, spec.dims, spec.precision, weights if spec.weights_path else None, device,
                   spec.weights_sha256)

    def build(self):
        return extractor_by_name(self.name, resolve_device(self.device), weights_path=_local(self.weights),
                                 precision=self.precision, weights_sha256=self.weights_sha256)


def _extractors(cfg: GANConfig, available: dict):
    """(per eval, final) ExtractorSpecs, decided without building either network: the standard
    extractor (or the offline fallback, with its warning) for `fid_final`; the per-eval one is the
    same, or the random-conv proxy where it is asked for or trials run without a GPU (the standard
    Inception runs at ~10-20 img/s on a CPU core). Precision: $SWEEPER_FID_PRECISION (default fp32)."""
    standard = standard_spec()
    proxy = cfg.eval_extractor == "proxy" or (cfg.eval_extractor == "auto" and available.get("GPU", 0) == 0)
    per_eval = proxy_spec(seed=0, precision=standard.precision) if proxy else standard
    return (standard if per_eval.name == standard.name else per_eval), standard


def _measured_on(per_eval, standard, cfg, select_stats, final_stats) -> str:
    """How the reported fid_final was measured, and the independent draw the winner was picked on."""
    split = not set(select_stats.indices) & set(final_stats.indices)  # not with fewer than MIN_TO_SPLIT images
    by = "" if per_eval is standard else f" ({per_eval.name}, the per-eval extractor)"
    return (f"{standard.name}, {cfg.final_fid_samples} generated vs {final_stats.n_samples} real images; the winner "
            f"picked by fid_select{by} on {'an independent' if split else 'another'} draw: {cfg.final_fid_samples} "
            f"generated with other z vs {select_stats.n_samples} {'other' if split else 'the same'} real images")


def _extractor_line(per_eval, standard, cfg) -> str:
    if per_eval is standard:
        return (f"FID: {standard.name}, per eval on {cfg.fid_samples} samples, fid_select and fid_final on "
                f"{cfg.final_fid_samples} each, against up to {cfg.ref_samples} real images of one half of the "
                f"data (fid_final: of the other half)")
    return (f"FID per eval and fid_select: {per_eval.name} on {cfg.fid_samples} and {cfg.final_fid_samples} samples, "
            f"a cheap proxy that ranks trials (no GPU), not comparable to published FIDs; fid_final: {standard.name} "
            f"on {cfg.final_fid_samples} samples; all against up to {cfg.ref_samples} real images of one half of the "
            f"data (fid_final: of the other half)")


GAN = GANKind()
