"""A classifier trained on generated images (or a mix with real ones) and tested on real images: how
useful the GANs' samples are as training data. Ray-free and MLflow-free, like the GAN loop."""
from trainables.classifier.config import ClassifierConfig
from trainables.classifier.evaluate import accuracy_report, final_test
from trainables.classifier.models import build_classifier
from trainables.classifier.synthetic import SyntheticImages
from trainables.classifier.train import train_classifier

__all__ = ["ClassifierConfig", "build_classifier", "train_classifier", "final_test", "accuracy_report",
           "SyntheticImages"]
