"""Trial checkpoints: everything needed to continue bit-identically (weights, optimisers, LR
schedules, EMA, RNG, counters), as the state dicts of a name -> object mapping."""
from pathlib import Path

import torch

from trainables.cache import atomic_writer
from trainables.errors import BadInput
from trainables.models import build_models

CHECKPOINT_FILE = "checkpoint.pt"
GRID_FILE = "grid.png"


def save_checkpoint(directory, stateful: dict, progress: dict) -> Path:
    """`stateful` maps names to objects with state_dict() (models, optimisers, schedulers, EMA)."""
    path = Path(directory) / CHECKPOINT_FILE
    state = {
        "state": {name: obj.state_dict() for name, obj in stateful.items() if obj is not None},
        "progress": dict(progress),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    with atomic_writer(path) as out:
        torch.save(state, out)
    return path


def load_checkpoint(directory, stateful: dict, *, if_absent: dict | None = None) -> dict:
    """Restores every object and the RNG in place; returns the saved progress dict.

    A None object is skipped (its saved state, if any, is left unread). Every other object must
    have a state in the checkpoint, except those named in `if_absent`: for them the function given
    there is called instead, after every saved state is restored (so it may read them). Any other
    missing state is a one-line BadInput naming it and the file, raised before anything is restored.
    """
    path = Path(directory) / CHECKPOINT_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    if_absent = if_absent or {}
    present = {name: obj for name, obj in stateful.items() if obj is not None and name in state["state"]}
    absent = [name for name, obj in stateful.items() if obj is not None and name not in present]
    unexpected = [name for name in absent if name not in if_absent]
    if unexpected:
        raise BadInput(f"{path}: the checkpoint has no state for {unexpected[0]!r}")
    for name, obj in present.items():
        obj.load_state_dict(state["state"][name])
    for name in absent:
        if_absent[name]()
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state["progress"]


def load_generator_state(directory) -> dict:
    """The generator to publish: the EMA generator when the run kept one, else G."""
    state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["state"]
    if "ema" in state:
        prefix = "module."  # AveragedModel keeps the averaged copy under .module
        return {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}
    return state["G"]


def load_generator(cfg, directory) -> torch.nn.Module:
    """The checkpoint's generator to publish or measure (see load_generator_state), on the CPU."""
    G = build_models(cfg)[0]
    G.load_state_dict(load_generator_state(directory))
    return G
