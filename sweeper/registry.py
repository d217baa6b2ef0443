"""Log the best trial's generator as an MLflow PyTorch model, register it, alias it `best`."""
import mlflow
import numpy as np
import torch

from sweeper.tracking import Tracking
from trainables.models import build_models
from trainables.training.checkpoint import load_generator_state

ALIAS = "best"


def model_name(sweep_name: str) -> str:
    return f"{sweep_name}-generator"


def register_generator(tracking: Tracking, run_id: str, cfg, checkpoint, sweep_name: str) -> str:
    """Returns the registered version. Saved as `pt2` (torch.export): loading it back unpickles
    nothing but tensors, unlike the `pickle` format."""
    G = build_models(cfg)[0]
    with checkpoint.as_directory() as directory:
        G.load_state_dict(load_generator_state(directory))
    G.eval()
    # Batch of 2: torch.export specialises a batch of 1 to a constant; this keeps the batch dynamic.
    example = np.random.default_rng(0).standard_normal((2, cfg.z_dim)).astype(np.float32)
    mlflow.set_tracking_uri(tracking.uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            G, name="generator", input_example=example, serialization_format="pt2",
            registered_model_name=model_name(sweep_name),
            # Given explicitly: inferring them spawns a subprocess that re-imports the world.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    version = str(info.registered_model_version)
    tracking.client().set_registered_model_alias(model_name(sweep_name), ALIAS, version)
    return version
