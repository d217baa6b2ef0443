"""The GAN loop with a list-appending `report`: metrics, checkpoints, exact resume, divergence."""
import shutil

import numpy as np
import pytest
import torch

from sweeper.refstats import reference_stats
from trainables.config import GANConfig
from trainables.data import toy_faces
from trainables.metrics import RandomConvFeatures
from trainables.models import build_models
from trainables.training.checkpoint import GRID_FILE, load_checkpoint, save_checkpoint
from trainables.training.gan import train_gan
from trainables.training.optim import build_optimizers

TINY = GANConfig(resolution=32, z_dim=16, g_width=8, d_width=8, batch_size=16, steps_per_eval=3,
                 num_evals=3, fid_samples=64, ref_samples=128, loss="wgan-gp", n_critic=2,
                 d_norm="layer", device="cpu")


@pytest.fixture(scope="module")
def setup():
    data = toy_faces(128, 32, seed=0)
    extractor = RandomConvFeatures(seed=0)
    ref = reference_stats(data.images, data.fingerprint, extractor, TINY.ref_samples)
    return data.images, extractor, ref


class Recorder:
    """The test's `report`: keeps the metrics and a copy of every checkpoint directory."""
    def __init__(self, root):
        self.root, self.metrics, self.checkpoints = root, [], []

    def __call__(self, metrics, directory):
        self.metrics.append(dict(metrics))
        if directory is not None:
            kept = self.root / f"ckpt_{len(self.metrics)}"
            shutil.copytree(directory, kept)
            self.checkpoints.append(kept)


def test_reports_every_eval_period_with_fixed_metric_names(setup, tmp_path):
    images, extractor, ref = setup
    report = Recorder(tmp_path)
    train_gan(TINY, images, report, extractor=extractor, ref_stats=ref)
    assert [m["eval_period"] for m in report.metrics] == [1, 2, 3]
    assert {"fid", "kimg", "img_per_s", "loss_d", "loss_g", "diverged"} <= set(report.metrics[0])
    assert report.metrics[-1]["kimg"] == pytest.approx(3 * 3 * 2 * 16 / 1000)
    assert all(np.isfinite(m["fid"]) and m["fid"] > 0 for m in report.metrics)
    assert all((c / GRID_FILE).stat().st_size > 0 for c in report.checkpoints)


def test_exact_resume_is_bit_identical_on_cpu(setup, tmp_path):
    images, extractor, ref = setup
    straight = Recorder(tmp_path / "a")
    train_gan(TINY, images, straight, extractor=extractor, ref_stats=ref)

    first = Recorder(tmp_path / "b")
    train_gan(TINY.replace(num_evals=1), images, first, extractor=extractor, ref_stats=ref)
    resumed = Recorder(tmp_path / "c")
    train_gan(TINY, images, resumed, extractor=extractor, ref_stats=ref, restore_from=first.checkpoints[-1])

    keys = ("eval_period", "kimg", "loss_d", "loss_g", "fid")
    assert [{k: m[k] for k in keys} for m in first.metrics + resumed.metrics] == \
           [{k: m[k] for k in keys} for m in straight.metrics]


def test_checkpoint_round_trip_restores_models_optimisers_and_rng(tmp_path):
    cfg = TINY
    torch.manual_seed(1)
    G, D = build_models(cfg)
    opt_g, opt_d = build_optimizers(cfg, G, D)
    D(G(torch.randn(2, cfg.z_dim))).mean().backward()
    opt_g.step(), opt_d.step()
    save_checkpoint(tmp_path, G=G, D=D, opt_g=opt_g, opt_d=opt_d, progress={"eval_period": 4})
    expected_draw = torch.rand(3)

    torch.manual_seed(99)
    G2, D2 = build_models(cfg)
    opt_g2, opt_d2 = build_optimizers(cfg, G2, D2)
    progress = load_checkpoint(tmp_path, G=G2, D=D2, opt_g=opt_g2, opt_d=opt_d2)
    assert progress == {"eval_period": 4}
    assert torch.equal(torch.rand(3), expected_draw)
    for a, b in zip(list(G.state_dict().values()) + list(D.state_dict().values()),
                    list(G2.state_dict().values()) + list(D2.state_dict().values())):
        assert torch.equal(a, b)
    assert str(opt_g.state_dict()) == str(opt_g2.state_dict())


def test_divergence_ends_the_trial_cleanly(setup, tmp_path):
    images, extractor, ref = setup
    report = Recorder(tmp_path)
    # A penalty weight beyond float32's range turns the critic's loss, then its weights, into inf/NaN.
    wild = TINY.replace(gp_weight=1e39, num_evals=5)
    final = train_gan(wild, images, report, extractor=extractor, ref_stats=ref)
    assert final["diverged"] == 1.0 and final["fid"] == float("inf")
    assert len(report.metrics) < 5 and report.metrics[-1] is not None
    assert len(report.checkpoints) == len(report.metrics) - 1  # the broken state is not checkpointed
