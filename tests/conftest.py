"""Shared test setup: an isolated cache, no downloads, and small real datasets/extractors."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never download (SWEEPER_OFFLINE) and never touch the user's cache.
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("SWEEPER_OFFLINE", "1")
    monkeypatch.delenv("SWEEPER_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real photos not found at {path} (see ../shared/data/README.md)")
    return path
