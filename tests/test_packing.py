"""Packing trials on a GPU: the default GPU fraction from a trial's measured memory footprint, an
explicit fraction used as given, each trial's memory cap from its share, and a trial ASHA stopped
ending its process (so its GPU memory is released). Real torch and real Ray Tune on the CPU; the
CUDA calls themselves are checked at the end (a capped process, and a packed trial past its share ending
as `oom` beside one that finishes), skipped without CUDA."""
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
import ray
import torch
from ray import tune

from sweeper import ASHA, Resources, Sweep, SweepError
from sweeper.driver.loader import load_sweep
from sweeper.kinds import GAN, complete
from sweeper.search.footprint import (
    CONTEXT_BYTES,
    FALLBACK_GPU_FRACTION,
    HEADROOM,
    MAX_TRIALS_PER_GPU,
    LiveBytes,
    gpu_fraction_for,
    largest_sizes,
    measure_footprint,
    measure_on_gpus,
    memory_cap,
    probe_configs,
    resolve_gpu_fraction,
    trials_per_gpu,
)
from sweeper.search.tuner import build_searcher, build_tuner, max_concurrent
from trainables.config import Config, GANConfig

GiB = 1 << 30
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep(**changes):
    base = dict(name="pack", config=GANConfig(num_evals=4),
                space={"g_lr": tune.loguniform(1e-5, 1e-3), "z_dim": tune.randint(16, 257),
                       "batch_size": tune.choice([32, 128, 64])},
                num_samples=64)
    return complete(Sweep(**{**base, **changes})).validate()


# --- the fraction ---------------------------------------------------------------------------------

def test_as_many_trials_per_gpu_as_fit_with_headroom_at_most_eight():
    device = 80 * GiB
    for peak in (0.1 * GiB, 2 * GiB, 5 * GiB, 10 * GiB, 20 * GiB, 35 * GiB, 52 * GiB, 100 * GiB):
        k = trials_per_gpu(peak, device)
        need = HEADROOM * peak + CONTEXT_BYTES
        # Counted the slow way: the most trials whose needs add up to at most the device.
        fit = max([n for n in range(1, 100) if n * need <= device] or [1])
        assert k == min(fit, MAX_TRIALS_PER_GPU), (peak / GiB, k)
    assert [trials_per_gpu(p * GiB, device) for p in (2, 10, 30, 100)] == [8, 5, 1, 1]
    assert gpu_fraction_for(10 * GiB, device) == 0.2 and gpu_fraction_for(30 * GiB, device) == 1.0


def test_each_fraction_lets_exactly_its_k_trials_run_at_once():
    sweep = _sweep()
    device = 80 * GiB
    for k in range(1, MAX_TRIALS_PER_GPU + 1):
        peak = (device / k - CONTEXT_BYTES) / HEADROOM - 1  # just fits k
        fraction = gpu_fraction_for(peak, device)
        assert trials_per_gpu(peak, device) == k
        assert round(fraction, 4) == fraction and k * fraction <= 1 < (k + 1) * fraction
        packed = sweep.with_(resources=Resources(gpu_fraction=fraction))
        assert max_concurrent(packed, {"CPU": 64, "GPU": 1}) == k
        assert max_concurrent(packed, {"CPU": 64, "GPU": 2}) == min(2 * k, 64 // 2 - 8 + 1)


def test_memory_cap_is_the_share_less_the_trials_cuda_context():
    device = 80 * GiB
    assert memory_cap(0.25, device) == pytest.approx((20 * GiB - CONTEXT_BYTES) / device)
    assert memory_cap(1.0, device) is None and memory_cap(2.0, device) is None and memory_cap(0.0, device) is None
    assert memory_cap(0.01, device) == pytest.approx(0.005)  # an explicit tiny share: half of it
    assert type(memory_cap(0.25, device)) is float  # torch refuses anything else
    # k packed trials' caps plus their contexts never exceed the device.
    for peak in (1 * GiB, 4 * GiB, 9 * GiB, 20 * GiB):
        fraction = gpu_fraction_for(peak, device)
        k = trials_per_gpu(peak, device)
        if fraction < 1:
            cap = memory_cap(fraction, device)
            assert k * (cap * device + CONTEXT_BYTES) <= device
            assert cap * device >= HEADROOM * peak  # and each trial's cap holds its measured need


def test_a_packed_trial_caps_its_allocator_at_its_share_less_its_context(monkeypatch):
    # The real cap_gpu_memory, with torch answering as on a 40 GiB GPU whose current device is cuda:1;
    # expected fractions by hand from footprint.memory_cap's rule: (share of the device - 1 GiB
    # context) / device, at least half the share; nothing for a whole GPU or none.
    import sweeper.trial.trainable as trainable

    total = 40 * GiB
    for share, expected in ((0.25, 9 / 40), (0.5, 19 / 40), (0.02, 0.01), (1.0, None), (0.0, None)):
        monkeypatch.setattr(trainable, "gpu_share", lambda share=share: share)
        patch, calls, asked = _answering_as_a_gpu(total, device_index=1)
        with patch:
            returned = trainable.cap_gpu_memory(GANConfig(device="auto"))
        if expected is None:  # a whole GPU (nothing to share) or no GPU held: the allocator is left alone
            assert calls == [] and returned is None, (share, calls)
            continue
        (fraction, device), = calls
        assert fraction == pytest.approx(expected, rel=1e-12) and type(fraction) is float, (share, fraction)
        assert fraction == memory_cap(share, total) and returned == fraction
        assert device == torch.device("cuda", 1) and asked == [torch.device("cuda", 1)]  # the trial's own GPU

    # A trial configured for the CPU sets nothing, whatever share it holds; nor does a machine without CUDA.
    monkeypatch.setattr(trainable, "gpu_share", lambda: 0.5)
    patch, calls, _ = _answering_as_a_gpu(total)
    with patch:
        assert trainable.cap_gpu_memory(GANConfig(device="cpu")) is None
    assert calls == []
    patch, calls, _ = _answering_as_a_gpu(total)
    with patch, monkeypatch.context() as no_cuda:
        no_cuda.setattr(torch.cuda, "is_available", lambda: False)
        assert trainable.cap_gpu_memory(GANConfig(device="auto")) is None
    assert calls == []


def test_an_explicit_fraction_wins_and_a_cpu_cluster_measures_nothing():
    explicit = _sweep(resources=Resources(gpu_fraction=0.5))
    assert resolve_gpu_fraction(explicit, GAN, shared={}, available={"CPU": 8, "GPU": 1}) is explicit
    auto = _sweep()
    assert auto.resources.gpu_fraction == "auto"
    assert resolve_gpu_fraction(auto, GAN, shared={}, available={"CPU": 8}) is auto
    assert not ray.is_initialized()  # neither started a measurement
    assert explicit.resources.per_trial(1) == {"cpu": 1.0, "gpu": 0.5}
    assert auto.resources.per_trial(0) == {"cpu": 1.0}
    assert auto.resources.per_trial(1) == {"cpu": 1.0, "gpu": FALLBACK_GPU_FRACTION}  # not measured
    assert _sweep(resources=Resources(gpu_fraction=2)).resources.per_trial(4) == {"cpu": 1.0, "gpu": 2}


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, "half", True, math.nan, math.inf])
def test_a_gpu_fraction_ray_cannot_take_is_refused(fraction):
    with pytest.raises(SweepError, match="resources.gpu_fraction"):
        Resources(gpu_fraction=fraction)


# --- which configs are measured -------------------------------------------------------------------

def test_the_largest_searched_sizes_are_measured():
    assert largest_sizes(_sweep()) == {"z_dim": 256, "batch_size": 128}  # no g_lr: not a size
    wgangp = load_sweep(os.path.join(REPO, "search_spaces", "wgangp.py"))
    # A define-by-run space: its int range's bound, and the largest of its integer choices.
    assert largest_sizes(wgangp) == {"z_dim": 256, "n_critic": 5}
    sngan = load_sweep(os.path.join(REPO, "search_spaces", "sngan.py"))
    assert largest_sizes(sngan) == {"z_dim": 256, "n_critic": 5}  # n_critic only on the resnet branch


def test_the_config_and_each_warm_start_are_measured_at_the_largest_sizes():
    sngan = load_sweep(os.path.join(REPO, "search_spaces", "sngan.py"))
    configs = probe_configs(sngan)
    assert {c.arch for c in configs} == {"dcgan", "resnet"}  # the warm starts bring the ResNet
    assert all(c.z_dim == 256 and c.n_critic == 5 for c in configs)
    assert len(configs) == len(set(configs)) <= 1 + len(sngan.warm_start)
    assert probe_configs(_sweep()) == [GANConfig(num_evals=4, z_dim=256, batch_size=128)]


# --- measuring ------------------------------------------------------------------------------------

def test_live_bytes_counts_each_storage_once_and_forgets_freed_ones():
    with LiveBytes() as meter:
        a = torch.ones(1000)  # 4000 bytes
        del a
        b = torch.ones(1000)
        view = b.view(10, 100)
        b.add_(1)
    assert meter.peak == 4000 and meter.live == 4000
    with LiveBytes() as meter:
        c, d = torch.ones(1000), torch.zeros(500, dtype=torch.float64)
    assert meter.peak == 8000
    del view, b, c, d


def _shared(resolution: int) -> dict:
    from sweeper.kinds.refstats import RefStats
    from trainables.metrics import RandomConvFeatures, extract, feature_stats

    images = np.random.default_rng(0).integers(0, 256, (64, 3, resolution, resolution), dtype=np.uint8)
    extractor = RandomConvFeatures(seed=0, device="cpu")
    features = extract(extractor, images)
    mu, sigma = feature_stats(features)
    stats = RefStats(mu=mu, sigma=sigma, features=features, extractor_name=extractor.name, n_samples=64, key="test")
    return {"images": images, "ref_stats": stats, "extractor": extractor.name, "weights": None}


def test_the_measured_footprint_grows_with_batch_and_resolution():
    from trainables.models import build_models
    from trainables.training.gan import train_gan

    torch.set_num_threads(1)
    # Small FID samples, so that the training step, not the evaluation, sets the peak.
    base = GANConfig(resolution=32, batch_size=16, g_width=32, d_width=32, z_dim=16, steps_per_eval=2,
                     fid_samples=2, device="cpu")
    shared = {32: _shared(32), 64: _shared(64)}
    peak = {}
    for batch, resolution in ((16, 32), (64, 32), (16, 64)):
        cfg = base.replace(batch_size=batch, resolution=resolution)
        footprint = measure_footprint(GAN, train_gan, cfg, shared[resolution])
        assert footprint.device == "cpu" and not footprint.out_of_memory
        peak[batch, resolution] = footprint.peak_bytes
        # At least the weights and Adam's two moments of both networks, all made inside the run.
        weights = sum(p.numel() * 4 for m in build_models(cfg) for p in m.parameters())
        assert footprint.peak_bytes >= 3 * weights
    assert peak[16, 32] < peak[64, 32] and peak[16, 32] < peak[16, 64], peak


@pytest.mark.slow
def test_auto_measures_the_footprint_in_a_ray_task_and_packs_by_it(capsys):
    from trainables.training.gan import train_gan

    config = GANConfig(resolution=32, batch_size=8, g_width=8, d_width=8, z_dim=16, steps_per_eval=2,
                       fid_samples=2, num_evals=4)
    sweep = _sweep(config=config, space={"z_dim": tune.choice([16, 32])}, num_samples=4)
    shared = _shared(32)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, address="local")  # a GPU Ray counts, not CUDA
    try:
        (probed, remote), = measure_on_gpus(sweep, GAN, shared)
        packed = resolve_gpu_fraction(sweep, GAN, shared, available={"CPU": 2, "GPU": 1})
    finally:
        ray.shutdown()
    torch.set_num_threads(1)  # as the Ray task ran it (the sweep's 1 CPU per trial)
    here = measure_footprint(GAN, train_gan, config.replace(z_dim=32), shared)
    # The Ray task measured the largest z_dim, with the data and the extractor, as this process does.
    assert probed == config.replace(z_dim=32) and remote.device == "cpu"
    assert remote.peak_bytes == pytest.approx(here.peak_bytes, rel=0.02)
    assert packed.resources.gpu_fraction == gpu_fraction_for(remote.peak_bytes, remote.device_bytes)
    assert packed.with_(resources=sweep.resources) == sweep  # nothing else changed
    assert "GPU packing: " in capsys.readouterr().out


# --- packed trials in Ray Tune --------------------------------------------------------------------

@dataclass(frozen=True)
class Point(Config):
    x: float = 0.0
    num_evals: int = 4
    seed: int = 0


def _answering_as_a_gpu(total_bytes: int, device_index: int = 0):
    """torch's CUDA queries answering as on a machine with a GPU of `total_bytes`, and a spy that
    records each (fraction, device) given to `set_per_process_memory_fraction` (a CPU has no allocator
    to cap). Everything else, `cap_gpu_memory` included, is real."""
    from types import SimpleNamespace
    from unittest import mock

    calls, asked = [], []

    def properties(device):
        asked.append(device)
        return SimpleNamespace(total_memory=total_bytes)

    patch = mock.patch.multiple(
        torch.cuda, is_available=lambda: True, current_device=lambda: device_index,
        get_device_properties=properties,
        set_per_process_memory_fraction=lambda fraction, device=None: calls.append((fraction, device)))
    return patch, calls, asked


def _packed_trial(config):
    from sweeper.trial.trainable import cap_gpu_memory, gpu_share

    # The cap run_trial sets (sweeper.trial.trainable._share_the_machine), from the share Tune gave
    # this trial, with torch answering as on a 40 GiB GPU.
    patch, calls, _ = _answering_as_a_gpu(40 * GiB)
    with patch:
        returned = cap_gpu_memory(Point())
    for period in range(1, Point.num_evals + 1):
        # loss_best: the sweep's objective, which run_trial would add (sweeper.trial.ledger)
        tune.report({"loss": config["x"], "loss_best": config["x"], "eval_period": period, "pid": os.getpid(),
                     "share": gpu_share(), "returned": returned, "set": [f for f, _ in calls]})


@pytest.mark.slow
def test_packed_trials_cap_their_gpu_memory_at_their_share_and_no_trial_process_outlives_the_sweep(tmp_path):
    # Each trial's cap comes from the share Tune gave it (its resources), not from a number the test
    # passes in: a fraction of 0.5 on a 40 GiB GPU is 20 GiB less the 1 GiB context, 19/40.
    # A stopped trial's process may run the next trial (reuse_actors); what it held is freed then
    # (tests/test_trial_reuse.py). Once the sweep ends, no trial process is left holding a GPU.
    # The trial workers cannot import this test module: send its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, address="local")  # a GPU Ray counts, not CUDA
    try:
        sweep = complete(Sweep("packed", Point(), trainable=_packed_trial, metric="loss", mode="min",
                      space={"x": tune.uniform(0.5, 1.0)}, warm_start=[{"x": 0.5}], num_samples=2,
                      max_concurrent=1, scheduler=ASHA(grace_period=1, reduction_factor=2),
                      resources=Resources(gpu_fraction=0.5))).validate()
        tuner = build_tuner(sweep, _packed_trial, storage_path=tmp_path, run_name="packed",
                            available={"CPU": 2, "GPU": 1}, searcher=build_searcher(sweep))
        results = list(tuner.fit())
    finally:
        ray.shutdown()
    assert len(results) == 2 and not any(r.error for r in results)
    assert all(r.metrics["share"] == 0.5 for r in results)
    assert all(r.metrics["set"] == [19 / 40] and r.metrics["returned"] == 19 / 40 for r in results), \
        [(r.metrics["set"], r.metrics["returned"]) for r in results]
    stopped = [r for r in results if r.metrics["eval_period"] < Point.num_evals]
    assert len(stopped) == 1, [r.metrics["eval_period"] for r in results]  # the worse one, at its first rung
    pids = {r.metrics["pid"] for r in results}
    for _ in range(60):  # every trial process (and with it any GPU memory) is gone
        if not any(_alive(pid) for pid in pids):
            break
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    """Whether a process runs (an exited one not yet reaped, a zombie, holds no memory)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- on a GPU -------------------------------------------------------------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda_only
def test_on_cuda_the_footprint_is_the_allocators_peak():
    from trainables.training.gan import train_gan

    small = GANConfig(resolution=32, batch_size=16, g_width=32, d_width=32, z_dim=16, steps_per_eval=2, fid_samples=2)
    peaks = [measure_footprint(GAN, train_gan, small.replace(batch_size=b), _shared(32)) for b in (16, 256)]
    assert all(0 < f.peak_bytes < f.device_bytes and f.device != "cpu" for f in peaks)
    assert peaks[0].peak_bytes < peaks[1].peak_bytes


@cuda_only
def test_on_cuda_a_capped_process_runs_out_at_its_share():
    total = torch.cuda.get_device_properties(0).total_memory
    cap = memory_cap(0.25, total)
    if torch.cuda.mem_get_info()[0] < 0.5 * total:
        pytest.skip("the GPU is busy; the check needs half of it free")
    torch.cuda.set_per_process_memory_fraction(cap, 0)
    try:
        assert torch.cuda.get_per_process_memory_fraction(0) == pytest.approx(cap)
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(0.3 * total), dtype=torch.uint8, device="cuda")
        held = torch.empty(int(0.8 * cap * total), dtype=torch.uint8, device="cuda")  # within the cap
        del held
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


PACKED_HOGS = '''
import time
from dataclasses import dataclass

import torch
from ray import tune

from sweeper import Resources, Sweep
from trainables.config import Config


@dataclass(frozen=True)
class Hog(Config):
    want: float = 0.0  # of the GPU's memory, held from the start to the end of the trial
    num_evals: int = 6
    seed: int = 0


def fit(cfg, report, restore_from=None):
    device = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(device).total_memory
    cap = torch.cuda.get_per_process_memory_fraction(device)
    if cfg.want > 0.5:
        time.sleep(3)  # its neighbour holds its own memory by then
    held = torch.empty(int(cfg.want * total), dtype=torch.uint8, device="cuda")
    for period in range(1, cfg.num_evals + 1):
        time.sleep(1)
        report({"eval_period": period, "loss": cfg.want, "cap": cap, "held": held.numel() / total}, None)


sweep = Sweep("hogs", Hog(), trainable=fit, metric="loss", mode="min", scheduler=None,
              space={"want": tune.uniform(0.1, 0.9)}, warm_start=[{"want": 0.3}, {"want": 0.6}],
              num_samples=2, max_concurrent=2, resources=Resources(gpu_fraction=0.5))
'''


@cuda_only
@pytest.mark.slow
def test_on_cuda_a_packed_trial_past_its_share_ends_oom_while_its_neighbour_finishes(tmp_path):
    # Two trials on half a GPU each, through `sweeper run` (run_trial's real cap and OOM handling): one
    # holds 0.3 of the GPU, the other asks for 0.6. Together they fit an idle GPU, so only the cap
    # (19/40 of a 40 GiB device, about 0.49 of an 80 GiB one) makes the second run out.
    import subprocess

    from mlflow.tracking import MlflowClient

    total = torch.cuda.get_device_properties(0).total_memory
    if torch.cuda.mem_get_info(0)[0] < 0.9 * total + 2 * CONTEXT_BYTES:
        pytest.skip("the GPU is busy; the check needs 0.9 of it free")
    (tmp_path / "hogs.py").write_text(PACKED_HOGS)
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([sys.executable, "-m", "sweeper", "run", "hogs.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("hogs").experiment_id])
    trials = {float(r.data.params["want"]): r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(trials) == [0.3, 0.6], sorted(trials)
    hog, neighbour = trials[0.6], trials[0.3]
    assert hog.data.tags["sweeper.outcome"] == "oom" and hog.info.status == "FAILED"
    assert "gpu_fraction=0.5" in hog.data.tags["sweeper.oom"]
    assert neighbour.data.tags["sweeper.outcome"] == "completed" and neighbour.info.status == "FINISHED"
    assert neighbour.data.metrics["eval_period"] == 6 and neighbour.data.metrics["held"] == pytest.approx(0.3)
    # The cap each trial process ran under: its half, less its CUDA context.
    assert neighbour.data.metrics["cap"] == pytest.approx((0.5 * total - CONTEXT_BYTES) / total)
    assert "1 oom" in result.stdout
