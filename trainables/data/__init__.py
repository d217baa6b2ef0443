"""Datasets as in-memory uint8 ImageSets: the procedural toy-faces set and folders of photos."""

from trainables.data.folder import load_folder
from trainables.data.imageset import DatasetError, ImageSet, make_imageset
from trainables.data.sources import check_source, load_dataset
from trainables.data.toy_faces import toy_faces

__all__ = [
    "ImageSet", "DatasetError", "make_imageset", "toy_faces", "load_folder", "load_dataset", "check_source",
]
