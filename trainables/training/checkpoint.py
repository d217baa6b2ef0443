"""Trial checkpoints: everything needed to continue bit-identically (weights, optimisers, RNG, step)."""
from pathlib import Path

import torch

CHECKPOINT_FILE = "checkpoint.pt"
GRID_FILE = "grid.png"


def save_checkpoint(directory, *, G, D, opt_g, opt_d, progress: dict) -> Path:
    path = Path(directory) / CHECKPOINT_FILE
    state = {
        "G": G.state_dict(), "D": D.state_dict(),
        "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
        "progress": dict(progress),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(directory, *, G, D, opt_g, opt_d) -> dict:
    """Restores the models, optimisers and RNG in place; returns the saved progress dict."""
    state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    G.load_state_dict(state["G"])
    D.load_state_dict(state["D"])
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state["progress"]


def load_generator_state(directory) -> dict:
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["G"]
