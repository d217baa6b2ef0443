"""The GAN loop with a list-appending `report`: metrics, checkpoints, exact resume, divergence."""

import numpy as np
import pytest
import torch
from conftest import Recorder, Stopped, assert_same_state

from sweeper.kinds.refstats import reference_stats
from trainables.config import GANConfig
from trainables.data import toy_faces
from trainables.metrics import RandomConvFeatures
from trainables.models import build_models
from trainables.training.checkpoint import GRID_FILE, load_checkpoint, load_generator_state, save_checkpoint
from trainables.training.gan import build_training, train_gan

TINY = GANConfig(resolution=32, z_dim=16, g_width=8, d_width=8, batch_size=16, steps_per_eval=3,
                 num_evals=3, fid_samples=64, ref_samples=128, loss="wgan-gp", n_critic=2,
                 d_norm="layer", device="cpu")


@pytest.fixture(scope="module")
def setup():
    data = toy_faces(128, 32, seed=0)
    extractor = RandomConvFeatures(seed=0)
    ref = reference_stats(data.images, data.fingerprint, extractor, TINY.ref_samples)
    return data.images, extractor, ref


def test_reports_every_eval_period_with_fixed_metric_names(setup, tmp_path):
    images, extractor, ref = setup
    report = Recorder(tmp_path)
    train_gan(TINY, report, images=images, extractor=extractor, ref_stats=ref)
    assert [m["eval_period"] for m in report.metrics] == [1, 2, 3]
    assert {"fid", "kid", "kimg", "img_per_s", "loss_d", "loss_g", "diverged"} <= set(report.metrics[0])
    assert all(np.isfinite(m["kid"]) for m in report.metrics)
    assert report.metrics[-1]["kimg"] == pytest.approx(3 * 3 * 2 * 16 / 1000)
    # train_s (what rungs in compute count) is the period's training time: the images D saw in it
    # over img_per_s, measured around the same loop.
    per_period = report.metrics[0]["kimg"] * 1000
    assert all(m["train_s"] > 0 and m["train_s"] == pytest.approx(per_period / m["img_per_s"]) for m in report.metrics)
    assert all(np.isfinite(m["fid"]) and m["fid"] > 0 for m in report.metrics)
    assert all((c / GRID_FILE).stat().st_size > 0 for c in report.checkpoints)


EVERY_TRICK = TINY.replace(
    loss="bce", label_smoothing=0.1, d_dropout=0.2, instance_noise=0.1, ema_decay=0.9, ema_start_kimg=0.05,
    diffaugment="color,translation,cutout", lr_schedule="cosine", optimizer="adamw", d_norm="spectral")


@pytest.mark.parametrize("cfg", [TINY, EVERY_TRICK], ids=["wgan-gp", "every-trick"])
def test_exact_resume_is_bit_identical_on_cpu(setup, tmp_path, cfg):
    images, extractor, ref = setup
    straight = Recorder(tmp_path / "a")
    train_gan(cfg, straight, images=images, extractor=extractor, ref_stats=ref)

    first = Recorder(tmp_path / "b", stop_after=1)
    with pytest.raises(Stopped):
        train_gan(cfg, first, images=images, extractor=extractor, ref_stats=ref)
    torch.manual_seed(12345)  # a fresh process: nothing may depend on the RNG state before the restore
    resumed = Recorder(tmp_path / "c")
    train_gan(cfg, resumed, images=images, extractor=extractor, ref_stats=ref, restore_from=first.checkpoints[-1])

    keys = ("eval_period", "kimg", "loss_d", "loss_g", "fid", "kid")
    assert [{k: m[k] for k in keys} for m in first.metrics + resumed.metrics] == \
           [{k: m[k] for k in keys} for m in straight.metrics]


def test_checkpoint_round_trip_restores_models_optimisers_and_rng(tmp_path):
    cfg = EVERY_TRICK
    run = build_training(cfg, torch.device("cpu"))
    run.D(run.G(torch.randn(2, cfg.z_dim))).mean().backward()
    run.opt_g.step(), run.opt_d.step(), run.sched_g.step(), run.sched_d.step()
    run.ema.update_parameters(run.G)
    save_checkpoint(tmp_path, run.stateful(), progress={"eval_period": 4})
    expected_draw = torch.rand(3)

    other = build_training(cfg.replace(seed=99), torch.device("cpu"))
    progress = load_checkpoint(tmp_path, other.stateful())
    assert progress == {"eval_period": 4}
    assert torch.equal(torch.rand(3), expected_draw)
    for name in ("G", "D", "ema"):
        a, b = run.stateful()[name].state_dict(), other.stateful()[name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for name in ("opt_g", "opt_d", "sched_g", "sched_d"):
        assert_same_state(run.stateful()[name].state_dict(), other.stateful()[name].state_dict(), name)
    # Adam's moments were really compared, every element of them (str() of a state dict elides
    # tensors over 1,000 elements, so comparing strings would miss a changed moment).
    moments = [s["exp_avg_sq"] for s in other.opt_g.state_dict()["state"].values()]
    assert any(m.numel() > 1000 for m in moments) and any(m.abs().sum() > 0 for m in moments)
    # The published generator is the EMA one, and it loads into a plain generator.
    plain = build_models(cfg)[0]
    plain.load_state_dict(load_generator_state(tmp_path))
    assert all(torch.equal(v, run.ema.module.state_dict()[k]) for k, v in plain.state_dict().items())


def test_assert_same_state_sees_one_changed_element_of_a_large_tensor():
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2048)}},
             "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.999), "params": [0]}]}
    changed = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2048)}},
               "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.999), "params": [0]}]}
    assert_same_state(state, changed, "opt")
    changed["state"][0]["exp_avg"][1000] = 1e-3
    assert str(state) == str(changed)  # what the string comparison used to see
    with pytest.raises(AssertionError, match=r"opt\.state\.0\.exp_avg"):
        assert_same_state(state, changed, "opt")
    changed["state"][0]["exp_avg"][1000] = 0
    changed["param_groups"][0]["betas"] = (0.5, 0.99)
    with pytest.raises(AssertionError, match="betas"):
        assert_same_state(state, changed, "opt")


def test_divergence_ends_the_trial_cleanly(setup, tmp_path):
    images, extractor, ref = setup
    report = Recorder(tmp_path)
    # A penalty weight beyond float32's range turns the critic's loss, then its weights, into inf/NaN.
    wild = TINY.replace(gp_weight=1e39, num_evals=5)
    final = train_gan(wild, report, images=images, extractor=extractor, ref_stats=ref)
    assert final["diverged"] == 1.0 and final["fid"] == float("inf") and final["kid"] == float("inf")
    # The diverged period is reported (what was returned) and is the last report: the run stopped.
    assert len(report.metrics) < 5 and report.metrics[-1] == final
    assert not (np.isfinite(final["loss_d"]) and np.isfinite(final["loss_g"]))
    # Every period before it was healthy and says so.
    assert all(m["diverged"] == 0.0 and np.isfinite(m["loss_d"]) and np.isfinite(m["fid"])
               for m in report.metrics[:-1])
    assert len(report.checkpoints) == len(report.metrics) - 1  # the broken state is not checkpointed
