"""Files a trial needs that only the driver has (the FID network's weights), carried through Ray's
object store: each node keeps one copy in its own cache, named by the content's hash, so no
driver-local path ever reaches a trial on another machine."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import ray

from trainables.cache import cache_dir, cached_entry, check_digest, file_sha256, write_atomic


@dataclass(frozen=True)
class ShippedFile:
    sha256: str
    suffix: str
    ref: object  # ray.ObjectRef of the file's bytes; fetched only by a node that lacks the file

    def local_path(self) -> str:
        """This node's copy, re-hashed against its name on every use; written from the object store
        (hash-checked, atomically) when it is missing or damaged (then with a one-line warning)."""
        path = cache_dir() / "shipped" / f"{self.sha256}{self.suffix}"
        if cached_entry(path, self._verified, "shipped file", "fetching it again from the object store") is None:
            self._fetch(path)
        return str(path)

    def _verified(self, path: Path) -> Path:
        check_digest(file_sha256(path), self.sha256)
        return path

    def _fetch(self, path: Path) -> None:
        content = ray.get(self.ref)
        if hashlib.sha256(content).hexdigest() != self.sha256:
            raise RuntimeError(f"shipped file {self.sha256[:12]} arrived corrupted")
        write_atomic(path, content)


def ship(path: str | os.PathLike | None) -> ShippedFile | None:
    """Driver: one copy of the file in the object store (None ships nothing)."""
    if path is None:
        return None
    content = Path(path).read_bytes()
    return ShippedFile(hashlib.sha256(content).hexdigest(), Path(path).suffix, ray.put(content))
