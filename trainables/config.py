"""The GAN trial's configuration: one frozen dataclass, validated before anything starts.

Every field is a hyperparameter or budget knob that ends up as an MLflow param, so names carry
their units (`steps_per_eval`, `num_evals`, `fid_samples`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

LOSSES = ("bce", "wgan-gp")
ARCHS = ("dcgan",)
G_NORMS = ("batch", "instance", "layer", "none")
D_NORMS = ("batch", "instance", "layer", "none")
OPTIMIZERS = ("adam", "rmsprop")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key."""


@dataclass(frozen=True)
class GANConfig:
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
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 64
    # budget: one eval period = steps_per_eval G steps, then FID + checkpoint + report
    steps_per_eval: int = 500
    num_evals: int = 20
    fid_samples: int = 5000
    ref_samples: int = 10000
    # reproducibility and placement
    seed: int = 0
    device: str = "auto"

    def validate(self) -> "GANConfig":
        _choice("loss", self.loss, LOSSES)
        _choice("arch", self.arch, ARCHS)
        _choice("g_norm", self.g_norm, G_NORMS)
        _choice("d_norm", self.d_norm, D_NORMS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("device", self.device, DEVICES)
        if self.resolution not in (32, 64):
            raise ConfigError(f"resolution: {self.resolution} is not supported (32 or 64)")
        for key in ("z_dim", "g_width", "d_width", "n_critic", "batch_size", "steps_per_eval",
                    "num_evals", "fid_samples", "ref_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("g_lr", "d_lr"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be in (0, 1), got {getattr(self, key)}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be in [0, 1), got {getattr(self, key)}")
        if self.gp_weight < 0:
            raise ConfigError(f"gp_weight: must be >= 0, got {self.gp_weight}")
        if self.loss == "wgan-gp" and self.d_norm == "batch":
            # The gradient penalty is per-sample; batch norm mixes samples and breaks it.
            raise ConfigError("d_norm: 'batch' is not allowed with loss 'wgan-gp' (use instance, layer or none)")
        return self

    def replace(self, **changes) -> "GANConfig":
        unknown = sorted(set(changes) - field_names(type(self)))
        if unknown:
            raise ConfigError(f"unknown config key: {unknown[0]!r}")
        return dataclasses.replace(self, **changes)


def _choice(key: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {value!r} (choose from {', '.join(allowed)})")


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def field_types(cls) -> dict[str, type]:
    """Field name -> its runtime type (the annotations are strings under `from __future__`)."""
    defaults = cls()
    return {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(cls)}
