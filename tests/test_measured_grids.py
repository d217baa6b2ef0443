"""The parent's top grids show the grid of the checkpoint whose numbers label them. A trial whose
best checkpoint is not its last period: the final evaluation measures that checkpoint and logs the
grid it holds (`final/grid.png`), and the parent's tile is that grid, pixel for pixel a grid drawn
here from the checkpoint's own generator, not the last period's. Real GAN training, real Ray tasks,
a real MLflow sqlite store."""
import io
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from ray import tune
from torchvision.utils import save_image

from sweeper.definition import Sweep
from sweeper.driver import final
from sweeper.kinds import complete
from sweeper.kinds.gan import GAN
from sweeper.kinds.refstats import REPORT, SELECT, reference_stats
from sweeper.tracking.summary import _top_grids, trial_grid
from trainables.config import GANConfig
from trainables.data import toy_faces
from trainables.metrics import RandomConvFeatures
from trainables.training.checkpoint import GRID_FILE, load_generator
from trainables.training.gan import train_gan

CFG = GANConfig(resolution=32, z_dim=16, g_width=16, d_width=16, batch_size=32, steps_per_eval=1, num_evals=3,
                fid_samples=64, ref_samples=128, final_fid_samples=64, loss="bce", device="cpu")
# The per-eval FID as a noisy small sample could have drawn it: best at period 2 of 3.
PER_EVAL_FID = {1: 9.0, 2: 4.0, 3: 6.0}
GAP = 12  # figures.top_grids_png's


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One trial of 3 periods, its checkpoints and period grids logged as a trial logs them, and the
    final evaluation of its best checkpoint (period 2) as the driver runs it."""
    root = tmp_path_factory.mktemp("grids")
    data = toy_faces(256, 32, seed=0)
    extractor = RandomConvFeatures(seed=0)
    stats = {h: reference_stats(data.images, data.fingerprint, extractor, 128, half=h) for h in (SELECT, REPORT)}
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("grids")).info.run_id
    checkpoints = {}

    def report(metrics, directory):
        period = int(metrics["eval_period"])
        shutil.copytree(directory, root / f"p{period}")
        checkpoints[period] = tune.Checkpoint.from_directory(str(root / f"p{period}"))
        named = root / "upload" / f"eval_{period:04d}.png"  # as sweeper.trial.delivery names it
        named.parent.mkdir(exist_ok=True)
        shutil.copy(root / f"p{period}" / GRID_FILE, named)
        client.log_artifact(run_id, str(named), artifact_path="grids")
        client.log_metric(run_id, "fid", PER_EVAL_FID[period], step=period)

    train_gan(CFG, report, images=data.images, extractor=extractor, ref_stats=stats[SELECT])
    sweep = complete(Sweep("grids", CFG, space={"g_lr": tune.loguniform(1e-5, 1e-3)})).validate()
    table = pd.DataFrame([{"trial_id": "t", "run_id": run_id, "outcome": "completed", "warm_start": False,
                           "group": "searched", "best_fid": 4.0, "config.g_lr": CFG.g_lr}])
    # Tune keeps the best checkpoint and the latest.
    results = [SimpleNamespace(metrics={"trial_id": "t"}, config={"g_lr": CFG.g_lr},
                               best_checkpoints=[(checkpoints[p], {"fid": PER_EVAL_FID[p], "eval_period": p})
                                                 for p in (2, 3)])]
    run = SimpleNamespace(sweep=sweep, kind=GAN, per_trial={"cpu": 1}, tracking=SimpleNamespace(client=lambda: client),
                          inputs=SimpleNamespace(trial={}, measured_on="test", final_tags={},
                                                 final={"final_extractor": extractor.name, "final_weights": None,
                                                        "select_extractor": extractor.name, "select_weights": None,
                                                        "select_stats": stats[SELECT], "final_stats": stats[REPORT]}))
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    try:
        table, chosen = final.evaluate(run, table, results)
    finally:
        ray.shutdown()
    return SimpleNamespace(client=client, run_id=run_id, sweep=sweep, table=table, chosen=chosen, root=root)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def drawn_from(checkpoint_dir) -> np.ndarray:
    """The checkpoint's generator on the trial's fixed z (64 of them, seeded by the config's seed),
    in an 8 x 8 grid."""
    G = load_generator(CFG, checkpoint_dir).eval()
    z = torch.randn(64, CFG.z_dim, generator=torch.Generator().manual_seed(CFG.seed))
    buffer = io.BytesIO()
    with torch.no_grad():
        save_image(G(z), buffer, format="png", nrow=8, normalize=True, value_range=(-1, 1))
    return pixels(buffer.getvalue())


def test_the_parent_shows_the_measured_checkpoints_grid_not_the_last_periods(measured):
    m = measured
    assert m.chosen["t"].period == 2 and m.table.loc[0, "final_eval_period"] == 2
    canvas = pixels(_top_grids(m.client, m.sweep, m.table, "fid_final", "fid_final")["top_grids.png"])
    reference = drawn_from(m.root / "p2")
    h, w = reference.shape[:2]
    tile = canvas[canvas.shape[0] - h - GAP:canvas.shape[0] - GAP, GAP:GAP + w]
    np.testing.assert_array_equal(tile, reference)
    # The test can tell: the last period's grid (what the parent showed before) is another picture.
    assert not np.array_equal(tile, drawn_from(m.root / "p3"))
    assert not np.array_equal(tile, pixels((m.root / "p3" / GRID_FILE).read_bytes()))
    # The trial's run holds the measured checkpoint's grid beside its final draws.
    logged = {a.path for a in m.client.list_artifacts(m.run_id, "final")}
    assert {"final/grid.png", "final/select_draw.json", "final/report_draw.json"} <= logged
    png, which = trial_grid(m.client, m.table.iloc[0], "fid", "min")
    np.testing.assert_array_equal(pixels(png), reference)
    assert which == "grid: period 2, the measured checkpoint"


def test_an_unmeasured_trial_shows_the_grid_of_its_best_period(measured):
    m = measured
    row = m.table.iloc[0].drop("final_eval_period")
    png, which = trial_grid(m.client, row, "fid", "min")
    assert which == "grid: period 2, its best fid"
    np.testing.assert_array_equal(pixels(png), drawn_from(m.root / "p2"))
    # Ranked the other way, period 1 is its best.
    assert trial_grid(m.client, row, "fid", "max")[1] == "grid: period 1, its best fid"
