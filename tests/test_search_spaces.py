"""Every shipped search-space file: it passes --dry-run (in-process through the CLI's main; once as
a command), and each seed project's published configuration trains on CPU under the --quick budget
(one short eval period, 32 px). The wgangp space searches the knobs that act late in a run (critic
steps, LR schedule, EMA, DiffAugment), each of its values trains, and its warm starts lie inside it."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import scipy.linalg
import torch

from sweeper import SweepError
from sweeper.cli import main
from sweeper.definition.space import warm_start_params
from sweeper.driver.loader import load_sweep
from sweeper.kinds.refstats import reference_stats
from trainables.config import GANConfig
from trainables.data import load_dataset
from trainables.metrics import RandomConvFeatures, extract
from trainables.seeds import seed000_wgangp_cat128, seed004_gan_wgangp_sngan
from trainables.training.checkpoint import load_generator
from trainables.training.gan import build_training, train_gan

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
    _trains_on_toy_faces(cfg)


def _trains_on_toy_faces(cfg):
    """Trains: one report per eval period with finite losses; the checkpointed generator has moved
    away from the untrained one (same seed, same init); and the reported FID is that generator's,
    recomputed here from its samples by the textbook formula (scipy's sqrtm of the covariances'
    product; the code takes another route), and not the untrained generator's."""
    data = load_dataset(cfg.data, cfg.resolution, toy_size=128, seed=0)
    extractor = RandomConvFeatures(seed=0)
    ref = reference_stats(data.images, data.fingerprint, extractor, cfg.ref_samples)
    reports, generators = [], []

    def report(metrics, directory):
        reports.append(metrics)
        generators.append(load_generator(cfg, directory))  # the directory is gone after the call

    metrics = train_gan(cfg, report, images=data.images, extractor=extractor, ref_stats=ref)
    assert [m["eval_period"] for m in reports] == list(range(1, cfg.num_evals + 1)) and metrics == reports[-1]
    assert metrics["diverged"] == 0.0 and np.isfinite([metrics["loss_d"], metrics["loss_g"]]).all()
    trained, untrained = generators[-1], build_training(cfg, torch.device("cpu")).generator()
    assert trained.state_dict().keys() == untrained.state_dict().keys()
    assert any(not torch.equal(v, untrained.state_dict()[k]) for k, v in trained.state_dict().items())
    # Both to 1e-6 (the two formulas agree to ~1e-10): four steps move a 32 px FID by ~0.1%.
    assert metrics["fid"] == pytest.approx(_textbook_fid(trained, cfg, extractor, ref), rel=1e-6)
    assert metrics["fid"] != pytest.approx(_textbook_fid(untrained, cfg, extractor, ref), rel=1e-6)


def _textbook_fid(G, cfg, extractor, ref) -> float:
    """FID of the per-eval draw (`fid_samples` images from z seeded with seed + 1, G in eval mode):
    ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    z = torch.randn(cfg.fid_samples, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
    with torch.no_grad():
        images = ((G.eval()(z) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    features = extract(extractor, images)
    mu, sigma = features.mean(axis=0), np.cov(features, rowvar=False)
    root = scipy.linalg.sqrtm(sigma @ ref.sigma).real
    return float(np.sum((mu - ref.mu) ** 2) + np.trace(sigma) + np.trace(ref.sigma) - 2 * np.trace(root))


# --- the wgangp space -----------------------------------------------------------------------------

WGANGP = REPO / "search_spaces" / "wgangp.py"
# What it searches besides the optimiser, z_dim and the norms, with every choice.
LATE_KNOBS = {"n_critic": (1, 2, 5), "lr_schedule": ("none", "linear-decay", "cosine"),
              "ema_decay": (0.0, 0.999, 0.9999), "diffaugment": ("", "color,translation,cutout")}


def test_wgangp_searches_critic_steps_lr_schedule_ema_and_diffaugment():
    sweep = load_sweep(WGANGP)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trials = []
    for _ in range(40):
        trial = study.ask()
        sweep.space(trial)
        study.tell(trial, 0.0)
        trials.append(trial)
    for key, choices in LATE_KNOBS.items():
        # On every branch (every optimiser but sgd for the schedule), with these choices, each drawn.
        having = [t for t in trials if key != "lr_schedule" or t.params["optimizer"] != "sgd"]
        assert all(t.distributions[key].choices == choices for t in having), key
        assert {t.params[key] for t in having} == set(choices), key
    # sgd keeps a constant lr (the config's "none"), so `--set cuda_graph=true` stays valid: SGD has
    # no capturable mode and a CUDA graph would replay its first lr.
    sgd = [t for t in trials if t.params["optimizer"] == "sgd"]
    assert sgd and not any("lr_schedule" in t.params for t in sgd) and sweep.config.lr_schedule == "none"
    assert load_sweep(WGANGP).resolve(quick=True, overrides=["cuda_graph=true"]).config.cuda_graph
    # Searched, so the file does not also fix them: its config keeps GANConfig's defaults.
    defaults, config = dataclasses.asdict(GANConfig()), dataclasses.asdict(sweep.config)
    assert {k: config[k] for k in LATE_KNOBS} == {k: defaults[k] for k in LATE_KNOBS}


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_wgangp_warm_starts_keep_the_seeds_values_inside_the_space(quick):
    sweep = load_sweep(WGANGP).resolve(quick=quick)  # validates: every warm start inside the space
    for point, seed in zip(sweep.warm_points, [seed000_wgangp_cat128, seed004_gan_wgangp_sngan["wgan-gp"]], strict=True):
        assert {k: point[k] for k in LATE_KNOBS} == {k: getattr(seed, k) for k in LATE_KNOBS}
        assert point["n_critic"] == 5 and point["ema_decay"] == 0.0
    # A seed whose value lies outside is refused, naming it ("step" is left out: no searched lr_gamma).
    stepped = sweep.with_(warm_start=(seed000_wgangp_cat128.replace(lr_schedule="step"),))
    with pytest.raises(SweepError, match=r"^warm_start\[0\]: space parameter 'lr_schedule': 'step' not in"):
        stepped.validate()


def test_wgangp_ema_averages_in_a_full_run_and_is_g_itself_under_quick():
    full, quick = load_sweep(WGANGP).resolve(), load_sweep(WGANGP).resolve(quick=True)
    start = full.config.ema_start_kimg
    assert quick.config.ema_start_kimg == start  # --quick changes only the budget

    def kimg(cfg, n_critic, evals):  # real images D has seen after `evals` eval periods
        return evals * cfg.steps_per_eval * n_critic * cfg.batch_size / 1000

    for n_critic in LATE_KNOBS["n_critic"]:
        # A full run averages for at least its second half, and not before the first promotion rung
        # (2 eval periods), where an EMA that lags G would lose to the same config without one.
        assert kimg(full.config, n_critic, 2) <= start <= kimg(full.config, n_critic, full.config.num_evals / 2)
        # --quick never gets there: its EMA is G, not an average still close to the untrained G.
        assert kimg(quick.config, n_critic, quick.config.num_evals) < start


@pytest.mark.parametrize("late", [
    dict(n_critic=1, lr_schedule="linear-decay", ema_decay=0.999, diffaugment="color,translation,cutout"),
    dict(n_critic=2, lr_schedule="cosine", ema_decay=0.9999, diffaugment=""),
], ids=["critic1-linear-ema0.999-augment", "critic2-cosine-ema0.9999"])
def test_every_new_wgangp_choice_trains(late):
    # With the warm start, which is n_critic 5, no schedule, no EMA and no DiffAugment (trained by
    # the seed files' test above), every value of the four knobs trains under the quick budget.
    sweep = load_sweep(WGANGP).resolve(quick=True)
    point = warm_start_params(sweep.space, {**sweep.warm_points[0], **late})  # inside the space
    # Two short eval periods, so the schedule moves across them; the EMA starts averaging after a
    # few steps here, or it would be G itself (test above).
    cfg = sweep.trial_config(point).replace(steps_per_eval=4, num_evals=2, batch_size=16, fid_samples=64,
                                            ref_samples=128, device="cpu", ema_start_kimg=0.04)
    assert {k: getattr(cfg, k) for k in late} == late
    _trains_on_toy_faces(cfg)
