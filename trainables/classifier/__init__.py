"""A classifier trained on generated images (or a mix with real ones) and tested on real images: how
useful the GANs' samples are as training data. Ray-free and MLflow-free, like the GAN loop.

Importing the package imports only its config (a search-space file names `ClassifierConfig`
without importing torch); the rest loads on first use.
"""
import importlib

from trainables.classifier.config import ClassifierConfig

_LAZY = {"build_classifier": "models", "train_classifier": "train", "final_test": "evaluate",
         "accuracy_report": "evaluate", "SyntheticImages": "synthetic"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ClassifierConfig", "build_classifier", "train_classifier", "final_test", "accuracy_report",
           "SyntheticImages"]
