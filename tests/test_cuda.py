"""The training step on a real GPU (skipped without CUDA; bench/gpu.sh runs it): every architecture,
loss and norm under bf16, spectral norm's σ in fp32 under CUDA autocast, the CUDA-graph step against
the eager one, no host synchronisation inside steps, and resume.

Resume on CUDA is close, not bit-exact: cuDNN may pick other algorithms in a new process
(benchmark mode autotunes), and some backward kernels accumulate with atomics."""
import numpy as np
import pytest
import torch
from conftest import Recorder, Stopped
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sweeper.kinds.refstats import reference_stats
from trainables.config import D_NORMS, LOSSES, GANConfig
from trainables.data import toy_faces
from trainables.metrics import RandomConvFeatures
from trainables.models.norms import spectral
from trainables.training.batches import DeviceBatches
from trainables.training.cuda import GraphedStep, make_step, speedups
from trainables.training.ema import update_ema
from trainables.training.gan import build_training, train_gan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CUDA = torch.device("cuda")
BASE = GANConfig(resolution=32, z_dim=32, g_width=16, d_width=16, batch_size=16, steps_per_eval=4, num_evals=2,
                 fid_samples=64, ref_samples=128, device="cuda", mixed_precision=True)


@pytest.fixture(scope="module")
def images():
    return toy_faces(256, 32, seed=0).images


def _combos():
    for arch in ("dcgan", "resnet"):
        for loss in LOSSES:
            for d_norm in D_NORMS:
                if not (loss == "wgan-gp" and d_norm == "batch"):
                    yield arch, loss, d_norm


@pytest.mark.parametrize("arch,loss,d_norm", list(_combos()))
def test_every_arch_loss_norm_step_runs_in_bf16(images, arch, loss, d_norm):
    g_norm = d_norm if d_norm in ("batch", "instance", "layer", "none") else "batch"
    cfg = BASE.replace(arch=arch, loss=loss, d_norm=d_norm, g_norm=g_norm, n_critic=2, diffaugment="color,translation")
    run = build_training(cfg, CUDA)
    step = make_step(cfg, run, DeviceBatches(images, CUDA))
    with speedups(cfg, CUDA):
        losses = torch.stack([step(0.0) for _ in range(3)])
    assert torch.isfinite(losses).all(), losses
    assert next(run.G.parameters()).is_contiguous(memory_format=torch.channels_last) or arch == "resnet"


def test_spectral_norm_sigma_is_fp32_under_cuda_autocast():
    def conv(ours: bool) -> nn.Module:
        torch.manual_seed(0)
        layer = nn.Conv2d(256, 512, 4, 2, 1)
        return (spectral(layer, True) if ours else spectral_norm(layer)).to(CUDA)

    x = torch.randn(4, 256, 8, 8, device=CUDA)
    reference, ours, torchs = conv(True), conv(True), conv(False)
    for _ in range(5):
        reference(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ours(x), torchs(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        w_ours, w_torch = ours.weight, torchs.weight
    w_ref = reference.weight
    assert torch.allclose(w_ours, w_ref, rtol=1e-5, atol=1e-7)
    # torch's own σ is a bf16 product under autocast (the reason for FP32SpectralNorm).
    assert (w_torch.float() / w_ref - 1).abs().max() > 1e-4


def _configs_for_graphs():
    return [BASE.replace(mixed_precision=False),
            BASE.replace(loss="wgan-gp", d_norm="layer", n_critic=3, lr_schedule="linear-decay", mixed_precision=False),
            BASE.replace(arch="resnet", loss="hinge", d_norm="spectral", optimizer="adamw", weight_decay=0.01,
                         instance_noise=0.2, d_dropout=0.2, diffaugment="color,translation,cutout", ema_decay=0.9,
                         mixed_precision=False)]


@pytest.mark.parametrize("cfg", _configs_for_graphs(), ids=["dcgan-bce", "wgan-gp-sched", "resnet-sn-tricks"])
def test_graph_step_matches_eager_step(images, cfg):
    # fp32, so the only differences are capturable-optimiser arithmetic and kernel choice.
    results = {}
    for graph in (False, True):
        c = cfg.replace(cuda_graph=graph)
        torch.manual_seed(0), torch.cuda.manual_seed_all(0)
        run = build_training(c, CUDA)
        step = make_step(c, run, DeviceBatches(images, CUDA))
        assert isinstance(step, GraphedStep) == graph
        losses = []
        for i in range(8):  # 3 warm-up steps, the capture, 4 replays
            losses.append(step(cfg.instance_noise * (1 - i / 8)).clone())
            run.sched_g.step(), run.sched_d.step()
            update_ema(run.ema, run.G, (i + 1) * 0.016, 0.0)
        results[graph] = torch.stack(losses), run
    (eager_losses, eager), (graph_losses, graphed) = results[False], results[True]
    assert graphed.opt_g.param_groups[0]["lr"] == eager.opt_g.param_groups[0]["lr"]  # floats, scheduled alike
    assert torch.allclose(graph_losses, eager_losses, rtol=1e-3, atol=1e-4), (graph_losses, eager_losses)
    for name in ("G", "D"):
        a, b = eager.stateful()[name].state_dict(), graphed.stateful()[name].state_dict()
        for key in a:
            assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-3, atol=1e-4), f"{name}: {key}"


@pytest.mark.parametrize("graph", [False, True])
def test_no_host_synchronisation_inside_the_steps(images, graph):
    cfg = BASE.replace(cuda_graph=graph, loss="wgan-gp", d_norm="spectral", n_critic=2, ema_decay=0.9,
                       instance_noise=0.1, diffaugment="color,translation,cutout", lr_schedule="cosine")
    run = build_training(cfg, CUDA)
    step = make_step(cfg, run, DeviceBatches(images, CUDA))
    loss_sum = torch.zeros(2, device=CUDA)

    def one(i):
        nonlocal loss_sum
        loss_sum += step(0.1 * (1 - i / 20))
        run.sched_g.step(), run.sched_d.step()
        update_ema(run.ema, run.G, (i + 1) * 0.032, 0.1)

    with speedups(cfg, CUDA):
        for i in range(5):  # lazy inits, autotuning, warm-up and capture may synchronise
            one(i)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i in range(5, 12):  # before and after ema_start_kimg: both EMA branches
                one(i)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss_sum).all()


@pytest.mark.parametrize("graph", [False, True])
def test_resume_on_cuda_is_close_to_an_uninterrupted_run(images, tmp_path, graph):
    cfg = BASE.replace(cuda_graph=graph, num_evals=3, ema_decay=0.9, lr_schedule="linear-decay")
    extractor = RandomConvFeatures(seed=0)
    data = toy_faces(256, 32, seed=0)
    ref = reference_stats(data.images, data.fingerprint, extractor, cfg.ref_samples)
    kwargs = dict(images=images, extractor=extractor, ref_stats=ref)
    straight = Recorder(tmp_path / "straight")
    train_gan(cfg, straight, **kwargs)
    first = Recorder(tmp_path / "first", stop_after=1)
    with pytest.raises(Stopped):
        train_gan(cfg, first, **kwargs)
    resumed = Recorder(tmp_path / "resumed")
    train_gan(cfg, resumed, restore_from=first.checkpoints[-1], **kwargs)
    joined = first.metrics + resumed.metrics
    assert [m["kimg"] for m in joined] == [m["kimg"] for m in straight.metrics]
    for a, b in zip(joined, straight.metrics):
        for key in ("loss_d", "loss_g", "fid"):
            assert np.isclose(a[key], b[key], rtol=0.05, atol=0.05), (key, a[key], b[key])
