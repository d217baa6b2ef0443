"""Datasets as uint8 ImageSets: prepared once from folders, archives, named downloads or the
procedural toy-faces set, cached as Arrow files and memory-mapped back."""

from trainables.data.folder import load_folder
from trainables.data.imageset import DatasetError, ImageSet, image_digests, make_imageset, train_test_split
from trainables.data.prepare import Prepared
from trainables.data.sources import check_source, load_dataset, prepare, source_classes
from trainables.data.toy_faces import toy_faces

__all__ = [
    "ImageSet", "DatasetError", "Prepared", "image_digests", "make_imageset", "train_test_split", "toy_faces", "load_folder",
    "load_dataset", "prepare", "check_source", "source_classes",
]
