"""Import a search-space file and return the Sweep it defines.

A search-space file runs like a script: its own directory is on sys.path while it loads, so it can
import its neighbours (`from seeds.seed000_wgangp_cat128 import published`). It is imported as a
real module kept in sys.modules, under a name only this process knows; so that trial processes
(on this machine or a worker node without the file) can unpickle what it defines (a trainable, a
define-by-run space), the module and the neighbours it imported travel by value, not by reference.
"""
import hashlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

from ray import cloudpickle

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
    folder = path.resolve().parent
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    except SweepError:
        del sys.modules[name]
        raise
    except Exception as e:  # the user's file: any error is theirs to see, on one line
        del sys.modules[name]
        raise SweepError(f"{path}: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(folder))
    _pickle_by_value([module, *(sys.modules[m] for m in set(sys.modules) - before)], folder)
    sweep = getattr(module, "sweep", None)
    if not isinstance(sweep, Sweep):
        raise SweepError(f"{path}: defines no `sweep = Sweep(...)`")
    return sweep


def _pickle_by_value(modules, folder: Path) -> None:
    """The file's own module and the neighbours only its folder makes importable. A package that
    is importable anyway (the installed `trainables`) stays by reference: a class sent by value
    would be another class in the trial, and isinstance checks against the real one would fail."""
    for module in modules:
        file = getattr(module, "__file__", None)
        if not file or not Path(file).resolve().is_relative_to(folder):
            continue
        if importlib.machinery.PathFinder.find_spec(module.__name__.split(".")[0], sys.path) is None:
            cloudpickle.register_pickle_by_value(module)
