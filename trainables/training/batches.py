"""Where a trial's uint8 training images live, and how a random batch of them reaches the device.

Resident (the usual case): the uint8 set moves to the device once, at the start of the trial, and a
batch is drawn, gathered, converted to floats in [-1, 1] and mirrored there. The step then involves
the host in nothing, so it stays free of host synchronisation (and capturable as a CUDA graph), and
uint8 costs a quarter of the device memory that float32 would.

The set is resident when it fits a device budget: by default half of the device's free memory when
the trial starts, since the rest is needed for the models, optimiser state, activations and FID
(and, with fractional GPUs, by the trials beside this one). On the CPU the array already is host
memory, so the budget is unlimited and resident means "used in place".

Fallback, when the set does not fit: it stays where it already is in host memory (under Ray a
read-only view of the object store) and is neither copied nor pinned; indices are drawn on the host,
the rows are gathered into a small pinned uint8 staging buffer and copied to the device
asynchronously; converting and mirroring still run on the device, so only uint8 bytes cross the bus.
An asynchronous copy only needs its source pinned, so pinning the staging buffers instead of the
whole set gives the same overlap without a second full copy of the data in page-locked memory, which
the OS cannot swap, is slow to allocate, and every trial on a node would hold again.

On the CPU both paths draw the same random numbers in the same order, so they return the same batches;
`DeviceBatches(images, torch.device("cpu"), max_device_bytes=0)` exercises the fallback there.
"""
import math
import warnings

import numpy as np
import torch

DEVICE_FRACTION = 0.5  # of the device's free memory the resident uint8 set may take
_STAGES = 2  # pinned staging buffers in the fallback ring


def sample_batch(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A random batch of a uint8 [N, C, H, W] tensor as floats in [-1, 1], randomly mirrored; all of
    it on the tensor's device."""
    idx = torch.randint(images.shape[0], (batch_size,), device=images.device)
    return _to_float_mirrored(images[idx])


def _to_float_mirrored(x: torch.Tensor) -> torch.Tensor:
    x = x.float().div_(127.5).sub_(1.0)
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, x.flip(3), x)


def default_device_budget(device: torch.device) -> float:
    """Bytes of uint8 images allowed to live on `device`."""
    if device.type != "cuda":
        return math.inf  # the CPU's "device" memory is where the array already is
    free, _total = torch.cuda.mem_get_info(device)
    return int(DEVICE_FRACTION * free)


def _host_tensor(images: np.ndarray) -> torch.Tensor:
    """A zero-copy tensor view of the array."""
    with warnings.catch_warnings():
        # Under Ray the array is a read-only zero-copy view of the object store; we never write to it.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(images)


class DeviceBatches:
    """Random float batches in [-1, 1], randomly mirrored, on `device`, from a uint8 [N, C, H, W] array.

    `resident` says whether the uint8 set was moved to the device (decided once, here); `nbytes` is
    its size. `max_device_bytes` overrides the default budget (`default_device_budget`).
    """

    def __init__(self, images: np.ndarray, device: torch.device, max_device_bytes: int | None = None):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {images.shape}")
        self.device = torch.device(device)
        self.nbytes = int(images.nbytes)
        budget = default_device_budget(self.device) if max_device_bytes is None else max_device_bytes
        self.resident = self.nbytes <= budget
        host = _host_tensor(images)
        self.images = host.to(self.device) if self.resident else host
        self._pinned = not self.resident and self.device.type == "cuda"
        self._stages: list[tuple[torch.Tensor, "torch.cuda.Event | None"]] = []
        self._turn = 0

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, batch_size: int) -> torch.Tensor:
        if self.resident:
            return sample_batch(self.images, batch_size)
        # The global CPU generator is in the checkpoint, so a resumed run draws the same indices.
        idx = torch.randint(self.images.shape[0], (batch_size,))
        stage, copied = self._next_stage(batch_size)
        torch.index_select(self.images, 0, idx, out=stage)
        x = stage.to(self.device, non_blocking=True)
        if copied is not None:
            copied.record()
        return _to_float_mirrored(x)

    def _next_stage(self, batch_size: int) -> tuple[torch.Tensor, "torch.cuda.Event | None"]:
        """The staging buffer to gather into, once the device has finished reading it.

        The copy out of a staging buffer is queued on the stream behind the steps already launched, so
        it runs only when the device gets there; overwriting the buffer before then would corrupt a
        batch not yet copied. Each buffer's event marks its copy's completion and is waited on before
        the buffer is reused. With two buffers that wait is for the copy issued two batches ago, which
        is normally done, so the host keeps running ahead of the device instead of stalling on the
        copy it just issued.
        """
        if not self._stages or self._stages[0][0].shape[0] != batch_size:
            # Dropping buffers with copies in flight is safe: the pinned-memory allocator holds a
            # block until the copies recorded on it have completed.
            shape = (batch_size, *self.images.shape[1:])
            self._stages = [(torch.empty(shape, dtype=torch.uint8, pin_memory=self._pinned),
                             torch.cuda.Event() if self._pinned else None) for _ in range(_STAGES)]
            self._turn = 0
        stage, copied = self._stages[self._turn]
        self._turn = (self._turn + 1) % _STAGES
        if copied is not None:
            copied.synchronize()  # returns at once when never recorded
        return stage, copied
