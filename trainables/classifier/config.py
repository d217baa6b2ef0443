"""The classifier trial's config: a cat/dog classifier trained on generated images, real images or a mix,
and judged on real images it never saw."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from trainables.config import Config, ConfigError, at_least, choice, in_open_unit

ARCHS = ("googlenet", "resnet18")
OPTIMIZERS = ("adam", "adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
RESOLUTIONS = (32, 64, 128, 256)


@dataclass(frozen=True)
class ClassifierConfig(Config):
    PREPARED_KEYS: ClassVar[tuple[str, ...]] = ("data", "test_data", "resolution", "generators")

    # data: real images of two or more classes (a known name, a folder with one subfolder per class,
    # ...: trainables.data.sources); validation always comes out of `data`
    data: str = "cifar10:cat,dog"
    test_data: str = ""  # "" carves the test split out of `data` (test_fraction); else a second source
    resolution: int = 32
    # class=URI pairs, comma separated; "" when training on real images only (real_fraction 1)
    generators: str = "cat=models:/cats-generator@best,dog=models:/dogs-generator@best"
    # architecture
    arch: str = "googlenet"
    aux_logits: bool = True  # googlenet's two auxiliary heads; resnet18 has none and ignores it
    # training images
    real_fraction: float = 0.0  # of every batch: 0 = synthetic only, 1 = real only
    synthetic_per_class: int = 0  # 0 = fresh generator draws every batch; N = a pool of N per class drawn once
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd
    label_smoothing: float = 0.0
    batch_size: int = 64
    # budget: one eval period = steps_per_eval steps, then validation + checkpoint + report
    steps_per_eval: int = 200
    num_evals: int = 10
    # The real-only reference (real_fraction 1), the denominator of the CAS, trains on its own budget,
    # whatever num_evals the searched trials get (and under --quick too): until its val_acc has not
    # improved for reference_patience eval periods, or reference_max_evals of them
    reference_patience: int = 3
    reference_max_evals: int = 30
    val_fraction: float = 0.2  # of the real training images, held out for validation
    test_fraction: float = 0.2  # of `data`, held out for the final test; only when test_data is ""
    # reproducibility and placement
    seed: int = 0
    device: str = "auto"

    def validate(self) -> "ClassifierConfig":
        for key, allowed in (("arch", ARCHS), ("optimizer", OPTIMIZERS), ("device", DEVICES)):
            choice(key, getattr(self, key), allowed)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}: must be finite, got {value}")
        if self.resolution not in RESOLUTIONS:
            raise ConfigError(f"resolution: {self.resolution} is not supported "
                              f"(choose from {', '.join(map(str, RESOLUTIONS))})")
        for key in ("batch_size", "steps_per_eval", "num_evals", "reference_patience", "reference_max_evals"):
            at_least(key, getattr(self, key), 1)
        for key in ("synthetic_per_class", "weight_decay"):
            at_least(key, getattr(self, key), 0)
        if not 0 <= self.real_fraction <= 1:
            raise ConfigError(f"real_fraction: must be in [0, 1], got {self.real_fraction}")
        in_open_unit("lr", self.lr, low_inclusive=False)
        for key in ("momentum", "label_smoothing"):
            in_open_unit(key, getattr(self, key), low_inclusive=True)
        for key in ("val_fraction", "test_fraction"):
            in_open_unit(key, getattr(self, key), low_inclusive=False)
        if self.real_fraction < 1 and not self.generator_uris():
            raise ConfigError(f"generators: needed for the synthetic part of batches (real_fraction "
                              f"{self.real_fraction} < 1)")
        return self

    @property
    def is_reference(self) -> bool:
        """A real-only trial: the reference the CAS measures the synthetic-only one against."""
        return self.real_fraction >= 1

    def evals(self) -> int:
        """This trial's eval periods at most: the reference's own cap, or num_evals."""
        return self.reference_max_evals if self.is_reference else self.num_evals

    def horizon(self) -> int:
        return max(self.num_evals, self.reference_max_evals)

    def generator_uris(self) -> dict[str, str]:
        """Class name -> generator model URI, parsed from `generators`."""
        uris = {}
        for item in filter(None, (part.strip() for part in self.generators.split(","))):
            name, sep, uri = (s.strip() for s in item.partition("="))
            if not sep or not name:
                raise ConfigError(f"generators: {item!r} is not a class=URI pair")
            if not uri:
                raise ConfigError(f"generators: class {name!r} has an empty URI")
            if name in uris:
                raise ConfigError(f"generators: class {name!r} appears twice")
            uris[name] = uri
        return uris
