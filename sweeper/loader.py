"""Import a search-space file and return the Sweep it defines.

A search-space file runs like a script: its own directory is on sys.path while it loads, so it can
import its neighbours (`from seeds.seed000_wgangp_cat128 import published`). It is imported as a
real module kept in sys.modules, so the functions it defines (a define-by-run space) can be pickled
by reference when Ray Tune checkpoints the searcher.
"""
import hashlib
import importlib.util
import sys
from pathlib import Path

from sweeper.spec import Sweep, SweepError


def load_sweep(path) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"search-space file not found: {path}")
    # One module name per file (not per stem: seeds/dcgan.py and dcgan.py must not collide).
    name = "sweeper_space_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except SweepError:
        del sys.modules[name]
        raise
    except Exception as e:  # the user's file: any error is theirs to see, on one line
        del sys.modules[name]
        raise SweepError(f"{path}: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    sweep = getattr(module, "sweep", None)
    if not isinstance(sweep, Sweep):
        raise SweepError(f"{path}: defines no `sweep = Sweep(...)`")
    return sweep
