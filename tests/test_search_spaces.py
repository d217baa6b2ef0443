"""Every shipped search-space file: it passes --dry-run (in-process through the CLI's main; once as
a command), and each seed project's published configuration trains on CPU under the --quick budget
(one short eval period, 32 px)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sweeper.cli import main
from sweeper.driver.loader import load_sweep
from sweeper.kinds.refstats import reference_stats
from trainables.data import load_dataset
from trainables.metrics import RandomConvFeatures
from trainables.training.gan import train_gan

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "search_spaces").glob("*.py"))
GAN_SPACES = [p for p in SPACES if p.stem != "classifier"]  # classifier.py needs registered generators
SEEDS = sorted((REPO / "search_spaces" / "seeds").glob("seed*.py"))


def test_every_seed_project_has_a_file():
    assert [p.name[:7] for p in SEEDS] == [f"seed00{i}" for i in range(5)]
    assert {p.stem for p in SPACES} >= {"wgangp", "dcgan", "sngan"}


@pytest.mark.parametrize("path", GAN_SPACES + SEEDS, ids=lambda p: p.stem)
def test_dry_run(path, tmp_path, monkeypatch, capsys):
    # In-process through the CLI's own entry point (main), in an empty working directory.
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--quick", "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "resolution = 32" in out and "warm start:\n  {" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", GAN_SPACES + SEEDS, ids=lambda p: p.stem)
def test_a_copied_example_runs_from_any_folder(path, tmp_path, monkeypatch, capsys):
    """A user copies an example into their own folder and edits it: nothing beside the original
    (the seeds/ folder) may be needed; its warm starts come from the installed package."""
    copy = tmp_path / "mine" / path.name
    copy.parent.mkdir()
    copy.write_text(path.read_text())
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(copy), "--quick", "--dry-run"]) == 0, capsys.readouterr().err
    assert "warm start:\n  {" in capsys.readouterr().out


def test_classifier_dry_run_without_generators_names_the_missing_store(tmp_path, monkeypatch, capsys):
    # Its dry run with registered generators is in test_classifier_sweep.py.
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(REPO / "search_spaces" / "classifier.py"), "--set", "data=toy-faces",
                 "--set", "test_data=", "--dry-run"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"sweeper: error: generators.cat: models:/cats-generator@best does not resolve: no MLflow store at "
        f"{tmp_path.resolve() / 'sweeps' / 'mlflow.db'} (run the generator sweeps first, or set MLFLOW_TRACKING_URI)"]
    assert list(tmp_path.iterdir()) == []  # nothing created, not even an empty store


@pytest.mark.slow
def test_dry_run_as_a_command(tmp_path):
    # Once through `python -m sweeper` in a fresh process: the module entry point, its exit codes
    # (0, and 2 for bad input) and nothing written; every file's dry run is checked in-process above.
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-m", "sweeper", "run", str(REPO / "search_spaces" / "wgangp.py"),
                         "--quick", "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "resolution = 32" in ok.stdout and "warm start:\n  {" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "sweeper", "run", str(REPO / "search_spaces" / "wgangp.py"),
                          "--quick", "--dry-run", "--set", "resolution=48"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert bad.stderr.startswith("sweeper: error: ") and "resolution" in bad.stderr
    assert list(tmp_path.iterdir()) == []


def _seed_configs():
    for path in SEEDS:
        sweep = load_sweep(path).resolve(quick=True)
        for i in range(len(sweep.warm_start)):
            yield pytest.param(sweep, i, id=f"{path.stem[:7]}-{i}")


@pytest.mark.parametrize("sweep, i", list(_seed_configs()))
def test_published_seed_configuration_trains_under_quick(sweep, i):
    # The first trials of a seed sweep are its published configuration(s), at the --quick budget
    # shrunk further to one short eval period so that all of them fit in the test run.
    cfg = sweep.trial_config(sweep.warm_start_params(i)).replace(
        steps_per_eval=4, num_evals=1, batch_size=16, fid_samples=64, ref_samples=128, device="cpu")
    assert cfg.resolution == 32
    data = load_dataset(cfg.data, cfg.resolution, toy_size=128, seed=0)
    extractor = RandomConvFeatures(seed=0)
    ref = reference_stats(data.images, data.fingerprint, extractor, cfg.ref_samples)
    reports = []
    metrics = train_gan(cfg, lambda m, d: reports.append(m), images=data.images, extractor=extractor, ref_stats=ref)
    assert len(reports) == 1 and metrics["diverged"] == 0.0
    assert np.isfinite(metrics["fid"]) and metrics["fid"] > 0
