"""Import a search-space file and return the Sweep it defines."""
import runpy
from pathlib import Path

from sweeper.spec import Sweep, SweepError


def load_sweep(path) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"search-space file not found: {path}")
    try:
        namespace = runpy.run_path(str(path), run_name="sweeper_search_space")
    except SweepError:
        raise
    except Exception as e:  # the user's file: any error is theirs to see, on one line
        raise SweepError(f"{path}: {type(e).__name__}: {e}") from None
    sweep = namespace.get("sweep")
    if not isinstance(sweep, Sweep):
        raise SweepError(f"{path}: defines no `sweep = Sweep(...)`")
    return sweep
