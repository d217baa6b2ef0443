"""Import a search-space file and return the Sweep it defines.

A search-space file runs like a script: its own directory is on sys.path while it loads, so it can
import its neighbours (`from helpers import my_space`). It is imported as a
real module kept in sys.modules, under a name only this process knows; so that trial processes
(on this machine or a worker node without the file) can unpickle what it defines (a trainable, a
define-by-run space), the module and the neighbours it imported travel by value, not by reference.
Like a script, it leaves no __pycache__ behind.

Any error the file raises while loading is a SweepError naming the file and the line. The Sweep
comes back completed by its kind (`sweeper.kinds.complete`).
"""
import hashlib
import importlib.machinery
import importlib.util
import sys
import traceback
from pathlib import Path

from ray import cloudpickle

from sweeper.definition import Sweep, SweepError
from sweeper.kinds import complete

SPACE_MODULE_PREFIX = "sweeper_space_"


def load_sweep(path) -> Sweep:
    path = Path(path)
    if path.is_dir():
        raise SweepError(f"search-space file {path} is a folder; expected a .py file, e.g. search_spaces/wgangp.py")
    if not path.is_file():
        raise SweepError(f"search-space file not found: {path}")
    if path.suffix != ".py":
        raise SweepError(f"search-space file {path} is not a Python file; expected a .py file")
    # One module name per file (not per stem: seeds/dcgan.py and dcgan.py must not collide).
    name = SPACE_MODULE_PREFIX + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = path.resolve().parent
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    dont_write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    except SweepError:
        del sys.modules[name]
        raise
    except Exception as e:  # the user's file: any error is theirs to see, on one line
        del sys.modules[name]
        raise SweepError(f"{_where(path, e)}: {type(e).__name__}: {_first_line(e)}") from None
    finally:
        sys.path.remove(str(folder))
        sys.dont_write_bytecode = dont_write_bytecode
    _pickle_by_value([module, *(sys.modules[m] for m in set(sys.modules) - before)], folder)
    if not hasattr(module, "sweep"):
        raise SweepError(f"{path}: defines no `sweep = Sweep(...)`")
    sweep = module.sweep
    if not isinstance(sweep, Sweep):
        raise SweepError(f"{path}: `sweep` is a {type(sweep).__name__}, expected Sweep(...)")
    return complete(sweep)


def _where(path: Path, error: Exception) -> str:
    """`file:line` of the error in the user's file (the deepest frame there; a SyntaxError's own line)."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f"{error.filename or path}:{error.lineno}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f"{path}:{frames[-1].lineno}" if frames else str(path)


def _first_line(error: Exception) -> str:
    text = (error.msg if isinstance(error, SyntaxError) else str(error)).strip()
    return text.splitlines()[0] if text else "(no message)"


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
