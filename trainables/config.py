"""Trial configurations: one frozen dataclass per kind of trial, validated before anything starts.

Every field is a hyperparameter or budget knob that ends up as an MLflow param, so names carry
their units (`steps_per_eval`, `num_evals`, `fid_samples`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import ClassVar

from trainables.errors import BadInput

LOSSES = ("bce", "wgan-gp", "hinge", "lsgan")
ARCHS = ("dcgan", "resnet")
G_NORMS = ("batch", "instance", "layer", "none")
D_NORMS = ("batch", "instance", "layer", "spectral", "none")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
LR_SCHEDULES = ("none", "linear-decay", "cosine", "step")
AUGMENTS = ("color", "translation", "cutout")
DEVICES = ("auto", "cpu", "cuda")
EVAL_EXTRACTORS = ("auto", "standard", "proxy")
RESOLUTIONS = {"dcgan": (32, 64, 128, 256, 512), "resnet": (32, 64, 128)}
SMOOTHABLE_LOSSES = ("bce", "lsgan")  # losses with a real-label target that smoothing can lower


class ConfigError(BadInput):
    """A bad configuration value; the message is one line naming the key."""


def check_finite(config) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name}: must be a finite number, got {value}")


def _finite_first(validate):
    @functools.wraps(validate)
    def checked(self):
        check_finite(self)
        return validate(self)
    return checked


class Config:
    """What a sweep needs of a trial's config (a frozen dataclass subclassing this): `validate()`
    returning self or raising ConfigError, `num_evals` (the trial's budget in eval periods, ASHA's
    max_t) and `seed`. `replace` refuses unknown keys.

    Every subclass's `validate()` first refuses a NaN or infinite float field (naming the key), so
    no kind of config has to remember it: NaN passes every `<`/`>` range check.
    """
    # Keys the driver prepares for once per sweep (the data, its statistics, a generator): never
    # searched (sweeper.definition.sweep refuses it), since a trial with another value would silently use the
    # prepared one.
    PREPARED_KEYS: ClassVar[tuple[str, ...]] = ()

    def validate(self):
        check_finite(self)
        return self

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("validate")
        if own is not None:
            cls.validate = _finite_first(own)

    def inapplicable_keys(self) -> set[str]:
        """Fields this config has but does not use (betas of an sgd trial): not logged as params."""
        return set()

    def horizon(self) -> int:
        """The most eval periods a trial of this sweep trains (the schedulers' max_t): `num_evals`."""
        return self.num_evals

    def replace(self, **changes):
        unknown = sorted(set(changes) - field_names(type(self)))
        if unknown:
            raise ConfigError(f"unknown config key: {unknown[0]!r}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class GANConfig(Config):
    PREPARED_KEYS: ClassVar[tuple[str, ...]] = ("data", "resolution", "eval_extractor")

    # data
    data: str = "toy-faces"
    resolution: int = 64
    # architecture
    arch: str = "dcgan"
    z_dim: int = 128
    g_width: int = 64  # channels of G's last block; doubled per block towards the 4x4 input
    d_width: int = 64  # channels of D's first block; doubled per block towards the 4x4 output
    g_norm: str = "batch"
    d_norm: str = "none"
    # objective
    loss: str = "bce"
    gp_weight: float = 10.0  # λ of the WGAN-GP gradient penalty
    n_critic: int = 1  # D steps per G step
    # optimisation
    optimizer: str = "adam"
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta1: float = 0.5  # adam, adamw
    beta2: float = 0.999  # adam, adamw
    momentum: float = 0.0  # sgd, rmsprop
    weight_decay: float = 0.0
    lr_schedule: str = "none"  # over the whole run of num_evals * steps_per_eval G steps
    lr_gamma: float = 0.1  # "step": the lr is multiplied by this at 50% and again at 75% of the run
    batch_size: int = 64
    # tricks
    label_smoothing: float = 0.0  # one-sided: D's real target becomes 1 - label_smoothing
    d_dropout: float = 0.0  # dropout after every down-sampling D block
    instance_noise: float = 0.0  # std of Gaussian noise on D's inputs at step 0, annealed to 0 at the end
    ema_decay: float = 0.0  # EMA of G's weights (0 = off); FID and the registered model use the EMA
    ema_start_kimg: float = 0.0  # the EMA tracks G exactly until this many kimg
    diffaugment: str = ""  # comma-separated DiffAugment policy, e.g. "color,translation,cutout"
    mixed_precision: bool = True  # bf16 autocast on CUDA; always off on CPU
    # Capture the whole train step as one CUDA graph (off until measured on a GPU; trains eagerly,
    # with a logged reason, where it cannot: on a CPU, or with the dataset in host memory).
    cuda_graph: bool = False
    # budget: one eval period = steps_per_eval G steps, then FID + checkpoint + report
    steps_per_eval: int = 500
    num_evals: int = 20
    fid_samples: int = 5000  # generated images per eval's FID/KID
    # Real images in each FID reference statistics, per half: the real images split into two disjoint
    # halves, one for everything that selects (the per-eval FID, `fid_select`), the other for the
    # reported `fid_final` (capped at the half's size; sweeper.kinds.refstats).
    ref_samples: int = 10000
    # Generated images of each of the final evaluation's two draws of the best trials (other z each):
    # `fid_select`, which picks the winner, and `fid_final`, which is reported (sweeper.driver.final).
    final_fid_samples: int = 10000
    # Feature extractor of the per-eval FID: "standard" (Inception), "proxy" (random conv, ~100x
    # cheaper on a CPU) or "auto" (standard where trials get GPUs, proxy otherwise). `fid_final`
    # always uses the standard extractor when its weights are available.
    eval_extractor: str = "auto"
    # reproducibility and placement
    seed: int = 0
    device: str = "auto"

    def inapplicable_keys(self) -> set[str]:
        applies = {"beta1": self.optimizer in ("adam", "adamw"), "beta2": self.optimizer in ("adam", "adamw"),
                   "momentum": self.optimizer in ("sgd", "rmsprop"), "gp_weight": self.loss == "wgan-gp",
                   "lr_gamma": self.lr_schedule == "step", "label_smoothing": self.loss in SMOOTHABLE_LOSSES,
                   "ema_start_kimg": self.ema_decay > 0}
        return {key for key, used in applies.items() if not used}

    def validate(self) -> "GANConfig":
        for key, allowed in (("loss", LOSSES), ("arch", ARCHS), ("g_norm", G_NORMS), ("d_norm", D_NORMS),
                             ("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES), ("device", DEVICES),
                             ("eval_extractor", EVAL_EXTRACTORS)):
            choice(key, getattr(self, key), allowed)
        for part in filter(None, self.diffaugment.split(",")):
            choice("diffaugment", part, AUGMENTS)
        if self.resolution not in RESOLUTIONS[self.arch]:
            raise ConfigError(f"resolution: {self.resolution} is not supported by arch {self.arch!r} "
                              f"(choose from {', '.join(map(str, RESOLUTIONS[self.arch]))})")
        for key in ("z_dim", "g_width", "d_width", "n_critic", "batch_size", "steps_per_eval", "num_evals"):
            at_least(key, getattr(self, key), 1)
        for key in ("fid_samples", "ref_samples", "final_fid_samples"):
            at_least(key, getattr(self, key), 2, why="FID needs a covariance, KID pairs of images")
        for key in ("gp_weight", "weight_decay", "instance_noise", "ema_start_kimg", "seed"):
            at_least(key, getattr(self, key), 0)
        for key in ("g_lr", "d_lr"):
            in_open_unit(key, getattr(self, key), low_inclusive=False)
        for key in ("beta1", "beta2", "momentum", "label_smoothing", "d_dropout", "ema_decay", "lr_gamma"):
            in_open_unit(key, getattr(self, key), low_inclusive=key != "lr_gamma")
        self._validate_combinations()
        return self

    def _validate_combinations(self) -> None:
        if self.loss == "wgan-gp" and self.d_norm == "batch":
            # The gradient penalty is per-sample; batch norm mixes samples and breaks it.
            raise ConfigError("d_norm: 'batch' is not allowed with loss 'wgan-gp' (use instance, layer, spectral or none)")
        if self.label_smoothing > 0 and self.loss not in SMOOTHABLE_LOSSES:
            raise ConfigError(f"label_smoothing: needs a loss with a real-label target "
                              f"({', '.join(SMOOTHABLE_LOSSES)}), not {self.loss!r}")
        if self.cuda_graph and self.optimizer == "sgd" and self.lr_schedule != "none":
            # SGD has no capturable mode: it reads its lr on the host, so a graph would replay the
            # first lr forever.
            raise ConfigError(f"lr_schedule: {self.lr_schedule!r} is not supported with cuda_graph and optimizer "
                              f"'sgd' (use lr_schedule 'none', another optimizer, or cuda_graph False)")


def choice(key: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {value!r} (choose from {', '.join(allowed)})")


def at_least(key: str, value, low, why: str = "") -> None:
    if value < low:
        raise ConfigError(f"{key}: must be >= {low}{f' ({why})' if why else ''}, got {value}")


def in_open_unit(key: str, value, low_inclusive: bool) -> None:
    if not ((0 <= value if low_inclusive else 0 < value) and value < 1):
        raise ConfigError(f"{key}: must be in {'[' if low_inclusive else '('}0, 1), got {value}")


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def field_types(cls) -> dict[str, type]:
    """Field name -> its runtime type (the annotations are strings under `from __future__`)."""
    defaults = cls()
    return {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(cls)}
