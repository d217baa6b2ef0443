"""DeviceBatches on the CPU: the resident path and the host-memory fallback (forced with a zero budget)."""
import warnings

import numpy as np
import pytest
import torch

from trainables.training.batches import DeviceBatches, sample_batch

CPU = torch.device("cpu")
PATHS = {"resident": None, "host": 0}  # max_device_bytes that selects each path


def _images(n=8, resolution=8, seed=0) -> np.ndarray:
    # Random pixels: every image differs from every other and from every mirror image.
    return np.random.default_rng(seed).integers(0, 256, (n, 3, resolution, resolution), dtype=np.uint8)


def _identify(batch: torch.Tensor, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, mirrored) of each sample; fails unless every sample is exactly one converted image,
    as is or mirrored."""
    ref = torch.from_numpy(images).float() / 127.5 - 1
    plain = (batch[:, None] == ref[None]).flatten(2).all(2)
    mirrored = (batch[:, None] == ref.flip(3)[None]).flatten(2).all(2)
    matches = torch.cat([plain, mirrored], 1)
    assert (matches.sum(1) == 1).all(), "a sample is not exactly one dataset image"
    which = matches.int().argmax(1)
    return which % len(images), which >= len(images)


def test_resident_on_cpu_by_default_and_by_budget():
    images = _images()
    assert DeviceBatches(images, CPU).resident
    assert DeviceBatches(images, CPU, max_device_bytes=images.nbytes).resident
    host = DeviceBatches(images, CPU, max_device_bytes=images.nbytes - 1)
    assert not host.resident and host.nbytes == images.nbytes and len(host) == 8
    assert not DeviceBatches(images, CPU, max_device_bytes=0).resident


def test_refuses_anything_but_uint8_nchw():
    with pytest.raises(ValueError, match="uint8"):
        DeviceBatches(_images().astype(np.float32), CPU)
    with pytest.raises(ValueError, match="uint8"):
        DeviceBatches(_images()[0], CPU)


@pytest.mark.parametrize("budget", PATHS.values(), ids=PATHS.keys())
def test_batches_are_mirrored_dataset_images_sampled_uniformly(budget):
    images = _images()
    batches = DeviceBatches(images, CPU, max_device_bytes=budget)
    torch.manual_seed(0)
    draws = [batches.sample(64) for _ in range(100)]
    assert all(b.dtype == torch.float32 and b.shape == (64, 3, 8, 8) for b in draws)
    batch = torch.cat(draws)
    assert batch.min() >= -1 and batch.max() <= 1
    index, mirrored = _identify(batch, images)
    assert 0.45 < mirrored.float().mean() < 0.55
    # Chi-square against uniform over 8 images (7 degrees of freedom): 30 is beyond p = 1e-4.
    counts = torch.bincount(index, minlength=8).double()
    expected = len(batch) / 8
    assert ((counts - expected) ** 2 / expected).sum() < 30


@pytest.mark.parametrize("budget", PATHS.values(), ids=PATHS.keys())
def test_same_seed_same_batches(budget):
    batches = DeviceBatches(_images(), CPU, max_device_bytes=budget)
    torch.manual_seed(3)
    first = [batches.sample(16) for _ in range(3)]
    torch.manual_seed(3)
    again = [batches.sample(16) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])


def test_on_cpu_both_paths_draw_the_batches_sample_batch_draws():
    images = _images()
    resident, host = DeviceBatches(images, CPU), DeviceBatches(images, CPU, max_device_bytes=0)
    outputs = []
    for source in (lambda n: sample_batch(torch.from_numpy(images), n), resident.sample, host.sample):
        torch.manual_seed(5)
        outputs.append(torch.cat([source(n) for n in (16, 16, 4, 16)]))  # batch size changes midway
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


def test_host_path_leaves_a_read_only_source_untouched_and_warns_nothing():
    images = _images()
    original = images.copy()
    images.flags.writeable = False  # as Ray's object store hands it over
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = DeviceBatches(images, CPU, max_device_bytes=0)
        torch.manual_seed(0)
        kept = batches.sample(32)
        kept_copy = kept.clone()
        for _ in range(5):  # wraps around the staging buffers
            batches.sample(32)
        resident = DeviceBatches(images, CPU)
        resident.sample(32)
    assert np.array_equal(images, original)
    assert torch.equal(kept, kept_copy)  # a returned batch is not a view of a reused buffer
