"""Load a folder or archive of photos into an ImageSet (prepared once, then from the cache)."""

from __future__ import annotations

import os

from trainables.data.imageset import ImageSet
from trainables.data.prepare import prepare_files


def load_folder(path: str | os.PathLike, resolution: int, class_name: str | None = None) -> ImageSet:
    """Every image under `path` (a folder, .zip or .tar(.gz)), labelled by its first subfolder level.

    See trainables.data.listing for the layout rules and trainables.data.decode for the decoding
    and the reasons files are skipped (counted in `skipped`). `class_name` loads only that class;
    `classes` still lists every class so labels keep their meaning across subsets. Raises
    DatasetError for a missing path, an unknown class or zero usable images.
    """
    return prepare_files(path, resolution, class_name).data
