"""Where sweeper keeps what it computes once: $SWEEPER_CACHE, default ~/.cache/sweeper."""
import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("SWEEPER_CACHE") or "~/.cache/sweeper").expanduser()


def offline() -> bool:
    """SWEEPER_OFFLINE=1: never touch the network (tests, air-gapped clusters)."""
    return os.environ.get("SWEEPER_OFFLINE") == "1"
