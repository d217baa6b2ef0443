"""The GPU-readiness of the training step, checked on the CPU (the CUDA-only checks are in
tests/test_cuda.py): the hand-written EMA against torch's AveragedModel, spectral norm's σ in fp32
under autocast, the CUDA-graph step's device-tensor inputs, and `cuda_graph` falling back to eager
with a logged reason where no graph can run."""
import logging

import numpy as np
import pytest
import torch
from conftest import Recorder
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sweeper.kinds.refstats import reference_stats
from trainables.config import ConfigError, GANConfig
from trainables.data import toy_faces
from trainables.metrics import RandomConvFeatures
from trainables.models import build_models
from trainables.models.norms import FP32SpectralNorm, spectral
from trainables.training.batches import DeviceBatches
from trainables.training.checkpoint import CHECKPOINT_FILE, load_generator_state
from trainables.training.cuda import GraphedStep, set_capturable
from trainables.training.ema import EMA, update_ema
from trainables.training.gan import build_training, train_gan
from trainables.training.step import train_step

TINY = GANConfig(resolution=32, z_dim=16, g_width=8, d_width=8, batch_size=8, steps_per_eval=2, num_evals=2,
                 fid_samples=32, ref_samples=64, device="cpu")


def _assert_same_state(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key}"


# --- EMA ---------------------------------------------------------------------------------------------

def _g_updates(G: nn.Module, steps: int):
    """A sequence of G states as training makes them: new weights, and train-mode forwards that move
    batch norm's running statistics and its integer num_batches_tracked."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        with torch.no_grad():
            for p in G.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
            for _ in range(3):
                G(torch.randn(4, G.z_dim, generator=gen))
        yield G


def test_ema_equals_averaged_model_with_buffers_on_the_same_g_updates():
    # ema_start_kimg as the loop applies it: the old code zeroed AveragedModel's n_averaged before
    # the start (so the update copied G); from the start on it averaged.
    decay, start_kimg, kimg_per_step = 0.9, 0.03, 0.01
    torch.manual_seed(0)
    G = build_models(TINY.replace(g_norm="batch"))[0]
    ours = EMA(G, decay)
    reference = AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    for k, G in enumerate(_g_updates(G, 8), start=1):  # noqa: B020 (the same G, updated in place)
        kimg = k * kimg_per_step
        update_ema(ours, G, kimg, start_kimg)
        if kimg < start_kimg:
            reference.n_averaged.zero_()
        reference.update_parameters(G)
        # Bit for bit: the same lerp on the same tensors in the same order.
        _assert_same_state(ours.state_dict(), reference.state_dict(), f"update {k}")
    assert any("num_batches_tracked" in key for key in ours.state_dict())
    assert not torch.equal(ours.module.net[0].weight, G.net[0].weight)  # it did average, not copy
    assert ours.n_averaged == int(reference.n_averaged) == 7  # counted on the host, restarted at the start
    assert isinstance(ours.n_averaged, int)


def test_ema_checkpoints_load_both_ways_with_averaged_model_ones(tmp_path):
    torch.manual_seed(0)
    G = build_models(TINY)[0]
    old = AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)
    for G in _g_updates(G, 3):  # noqa: B020 (the same G, updated in place)
        old.update_parameters(G)
    # A checkpoint written before EMA was hand-written loads into the new EMA, count included ...
    new = EMA(build_models(TINY)[0], 0.5)
    new.load_state_dict(old.state_dict())
    _assert_same_state(new.state_dict(), old.state_dict(), "old -> new")
    assert new.n_averaged == 3
    # ... and the published generator of such a checkpoint is its averaged G.
    torch.save({"state": {"G": G.state_dict(), "ema": old.state_dict()}}, tmp_path / CHECKPOINT_FILE)
    _assert_same_state(load_generator_state(tmp_path), old.module.state_dict(), "published")
    # The other way round too: same keys, same tensors.
    back = AveragedModel(build_models(TINY)[0], use_buffers=True)
    back.load_state_dict(new.state_dict())
    assert int(back.n_averaged) == 3
    with pytest.raises(RuntimeError, match="n_averaged"):
        EMA(G, 0.5).load_state_dict(new.module.state_dict())  # not an EMA state: refused, not guessed


# --- spectral norm in fp32 ---------------------------------------------------------------------------

def _sn_conv(seed: int, ours: bool) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(64, 128, 4, 2, 1)
    return spectral(conv, True) if ours else spectral_norm(conv)


def _parametrization(conv: nn.Conv2d) -> FP32SpectralNorm:
    return conv.parametrizations.weight[0]


def test_spectral_norm_matches_torchs_in_fp32():
    # Same initial u, v, same buffers and keys, same outputs: switching implementation changed nothing
    # in fp32, so checkpoints and seeded runs carry over.
    ours, torchs = _sn_conv(0, ours=True), _sn_conv(0, ours=False)
    _assert_same_state(ours.state_dict(), torchs.state_dict(), "initial state")
    x = torch.randn(2, 64, 16, 16)
    for _ in range(3):
        assert torch.equal(ours(x), torchs(x))
    _assert_same_state(ours.state_dict(), torchs.state_dict(), "after three power iterations")


def test_spectral_norm_sigma_and_weight_stay_fp32_under_bf16_autocast():
    fp32, mixed = _sn_conv(0, ours=True), _sn_conv(0, ours=True)
    x = torch.randn(2, 64, 16, 16)
    for _ in range(3):  # train-mode forwards: a power iteration each
        fp32(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mixed(x)
        assert out.dtype == torch.bfloat16  # the conv itself does run in bf16
    # The power iteration's vectors, σ and the normalised weight are exactly the fp32 ones.
    _assert_same_state(mixed.state_dict(), fp32.state_dict(), "u, v after autocast forwards")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight = mixed.weight
    assert weight.dtype == torch.float32 and torch.equal(weight, fp32.weight)
    # What the guard prevents: the same σ computed under autocast without it is a bf16 product,
    # visibly off (torch's own version uses torch.mv, which CUDA autocast casts and CPU autocast
    # does not, so on a CPU only this unguarded call can show it; tests/test_cuda.py shows torch's).
    sn = _parametrization(mixed)
    weight_mat = sn._reshape_weight_to_matrix(mixed.parametrizations.weight.original)
    exact = sn.sigma(weight_mat)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unguarded = sn.sigma(weight_mat)
    assert unguarded.dtype == torch.bfloat16
    assert abs(unguarded.float() / exact - 1) > 1e-4
    assert torch.allclose(exact, torch.linalg.matrix_norm(weight_mat, ord=2), rtol=0.05)  # it is σ


# --- the CUDA-graph step's pieces that a CPU can run -------------------------------------------------

def test_step_reading_lr_and_noise_from_device_tensors_equals_the_float_step():
    # In a graph, the lr of every param group and the instance-noise std are 0-d tensors refilled
    # before each replay while the schedulers keep host floats; GraphedStep's eager step runs exactly
    # that way. It must train as the plain step does, with the schedule really applied.
    cfg = TINY.replace(instance_noise=0.3, lr_schedule="linear-decay", num_evals=1, steps_per_eval=4,
                       optimizer="rmsprop", momentum=0.5)
    images = toy_faces(32, 32, seed=0).images
    plain, graphed = (build_training(cfg, torch.device("cpu")) for _ in range(2))
    step = GraphedStep(cfg, graphed, DeviceBatches(images, torch.device("cpu")))
    batches = DeviceBatches(images, torch.device("cpu"))
    for i, noise in enumerate([0.3, 0.2, 0.1, 0.0]):
        torch.manual_seed(i)
        expected = train_step(cfg, plain.G, plain.D, plain.opt_g, plain.opt_d, batches, noise)
        torch.manual_seed(i)
        step.noise_std.fill_(noise)
        with step._tensor_lrs():
            assert all(torch.is_tensor(g["lr"]) for g in graphed.opt_g.param_groups + graphed.opt_d.param_groups)
            got = step._step()
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-7), i
        for run in (plain, graphed):
            run.sched_g.step(), run.sched_d.step()
        # Back to floats for the scheduler and the checkpoint, and the schedule moved on.
        assert graphed.opt_g.param_groups[0]["lr"] == plain.opt_g.param_groups[0]["lr"] == pytest.approx(cfg.g_lr * (1 - (i + 1) / 4))
    for name in ("G", "D"):
        a, b = plain.stateful()[name].state_dict(), graphed.stateful()[name].state_dict()
        for key in a:
            assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-5, atol=1e-6), f"{name}: {key}"


def test_a_checkpoint_from_capturable_optimisers_resumes_eagerly():
    # A graph trial saves optimisers in capturable mode; resumed where no graph runs (a CPU here),
    # they must be switched back, or Adam refuses to step.
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    saved["param_groups"][0]["capturable"] = True
    resumed = torch.optim.Adam(model.parameters())
    resumed.load_state_dict(saved)
    with pytest.raises((RuntimeError, AssertionError), match="capturable"):
        resumed.step()
    set_capturable(resumed, False)
    resumed.step()
    assert all(s["step"].device.type == "cpu" and float(s["step"]) == 2 for s in resumed.state.values())


@pytest.fixture(scope="module")
def data_and_stats():
    data = toy_faces(64, 32, seed=0)
    extractor = RandomConvFeatures(seed=0)
    return data, extractor, reference_stats(data.images, data.fingerprint, extractor, TINY.ref_samples)


def test_cuda_graph_on_a_cpu_logs_why_and_trains_eagerly(data_and_stats, tmp_path, caplog):
    data, extractor, ref = data_and_stats
    runs = {}
    for graph in (False, True):
        report = Recorder(tmp_path / str(graph))
        with caplog.at_level(logging.WARNING, logger="trainables.training.cuda"):
            train_gan(TINY.replace(cuda_graph=graph, num_evals=1), report, images=data.images, extractor=extractor, ref_stats=ref)
        runs[graph] = report.metrics
    assert [r.getMessage() for r in caplog.records] == ["cuda_graph: training eagerly, the device is cpu"]
    keys = ("kimg", "loss_d", "loss_g", "fid", "kid")
    assert [{k: m[k] for k in keys} for m in runs[True]] == [{k: m[k] for k in keys} for m in runs[False]]
    assert all(np.isfinite(m["loss_d"]) for m in runs[True])


def test_cuda_graph_refuses_a_scheduled_sgd_naming_the_key():
    with pytest.raises(ConfigError, match=r"^lr_schedule: .*cuda_graph"):
        TINY.replace(cuda_graph=True, optimizer="sgd", lr_schedule="cosine").validate()
    TINY.replace(cuda_graph=True, optimizer="sgd").validate()  # a constant lr is part of the graph
    TINY.replace(cuda_graph=True, optimizer="adam", lr_schedule="cosine").validate()
