"""What a trial does differently on a GPU: cuDNN autotuning, TF32 matmuls, channels_last models, and
the whole train step replayed as one CUDA graph (`cuda_graph=True`).

Everything here is decided at run time from the device the trial got; nothing touches CUDA at
import, and on a CPU every function is a no-op (or says why it is).

Why a graph: at 64x64 with batch 64 the eager step is launch-bound (a bigger batch gives the same
steps/s); replaying a captured step launches the whole of it, n_critic D updates and the G update,
with one call. What capture needs, and how the step provides it:
- static shapes and no host synchronisation in the step (step.py's contract; the dataset resident
  on the device, so sampling a batch is device work too);
- random numbers drawn inside the graph: torch's default CUDA generator is graph-safe (each replay
  advances its offset), so every replay draws fresh z, batches, augmentations and noise;
- values that change between steps read from device tensors the graph captured, refilled before
  each replay with `fill_` (no sync): the instance-noise std and every param group's lr, which the
  LR schedulers keep updating as host floats;
- capturable optimisers (their step counters live on the device); SGD has no such mode, so with
  an LR schedule it is refused at validation (config.py), and without one its constant lr is
  simply part of the graph;
- autocast's weight-cast cache off while capturing (step.autocast), as torch requires.
"""
import contextlib
import logging
import warnings

import torch

from trainables.training.step import train_step

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps before capture: optimiser state, cuDNN autotuning, lazy inits


@contextlib.contextmanager
def speedups(cfg, device: torch.device):
    """Around training (not evaluation, whose precision is the FID code's choice): cuDNN picks the
    fastest algorithms for our fixed shapes, and with mixed precision the few fp32 matmuls left
    (resnet's Linear layers, the gradient penalty's) use TF32. Convolutions already default to
    TF32 in torch. Restored on exit."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = torch.backends.cudnn.benchmark, matmul.fp32_precision
    torch.backends.cudnn.benchmark = True
    if cfg.mixed_precision:
        matmul.fp32_precision = "tf32"  # the per-operator API; mixing it with allow_tf32 is an error
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, matmul.fp32_precision = before


def prefer_channels_last(cfg, device: torch.device) -> bool:
    """NHWC feeds bf16 tensor-core convolutions without transposes; in fp32 there is no such gain."""
    return device.type == "cuda" and cfg.mixed_precision


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Switches an optimiser (and its restored state) in or out of capturable mode. A checkpoint
    carries the mode it was written in, so a resumed trial is switched to the mode it runs in."""
    for group in optimizer.param_groups:
        if "capturable" not in group:
            continue  # SGD: nothing on the host to move
        group["capturable"] = capturable
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if torch.is_tensor(state.get("step")):
                # Capturable steps are float32 on the parameter's device, the others on the CPU.
                state["step"] = state["step"].to(p.device if capturable else "cpu", torch.float32)


def graph_unavailable(cfg, batches) -> str | None:
    """Why the step cannot be a CUDA graph here, or None when it can."""
    if batches.device.type != "cuda":
        return f"the device is {batches.device.type}"
    if not batches.resident:
        return "the dataset does not fit on the GPU, so batches are gathered on the host"
    return None


def make_step(cfg, run, batches):
    """The train step as `step(noise_std: float) -> [loss_d, loss_g]` on the device: a replayed CUDA
    graph when `cfg.cuda_graph` and possible, else eager (with the reason logged once)."""
    graphed = cfg.cuda_graph and graph_unavailable(cfg, batches) is None
    for optimizer in (run.opt_g, run.opt_d):
        set_capturable(optimizer, graphed)
    if cfg.cuda_graph and not graphed:
        log.warning("cuda_graph: training eagerly, %s", graph_unavailable(cfg, batches))
    if graphed:
        return GraphedStep(cfg, run, batches)
    return lambda noise_std: train_step(cfg, run.G, run.D, run.opt_g, run.opt_d, batches, noise_std)


class GraphedStep:
    """The first WARMUP_STEPS calls train eagerly on a side stream (as torch's whole-network capture
    example does); the next captures the step and every call from then on replays it. Each call is
    one real training step, so the step count and the LR schedule are the same as eager. A capture
    that fails (an op torch cannot capture) logs why and the trial goes on eagerly."""

    def __init__(self, cfg, run, batches):
        self.cfg, self.run, self.batches = cfg, run, batches
        device = batches.device
        self.noise_std = torch.zeros((), device=device)
        # SGD's groups have no capturable mode and keep their float lr (constant: see config.py).
        self.lrs = [(group, torch.tensor(float(group["lr"]), device=device))
                    for optimizer in (run.opt_g, run.opt_d) for group in optimizer.param_groups
                    if "capturable" in group]
        self.calls, self.graph, self.losses, self.eager = 0, None, None, False

    def __call__(self, noise_std: float) -> torch.Tensor:
        self.noise_std.fill_(noise_std)
        with self._tensor_lrs():
            if self.graph is None and not self.eager and self.calls >= WARMUP_STEPS:
                self._capture()
            self.calls += 1
            if self.graph is None:
                return self._eager_on_side_stream()
            self.graph.replay()
            return self.losses

    def _step(self) -> torch.Tensor:
        run = self.run
        return train_step(self.cfg, run.G, run.D, run.opt_g, run.opt_d, self.batches, self.noise_std)

    def _capture(self) -> None:
        """Records one step; nothing runs until the graph is replayed."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                losses = self._step()
        except RuntimeError as error:
            log.warning("cuda_graph: capture failed, training eagerly: %s", str(error).splitlines()[0])
            self.eager = True
            return
        self.graph, self.losses = graph, losses

    def _eager_on_side_stream(self) -> torch.Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), warnings.catch_warnings():
            # Optimisers warn when a capturable one steps outside a capture: expected while warming up.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            losses = self._step()
        torch.cuda.current_stream().wait_stream(side)
        return losses

    @contextlib.contextmanager
    def _tensor_lrs(self):
        """The optimisers read each lr from the device tensor the graph captured, refreshed from the
        host float the scheduler keeps; the float is back in place for the scheduler and checkpoints."""
        floats = [group["lr"] for group, _ in self.lrs]
        for (group, lr), value in zip(self.lrs, floats):
            lr.fill_(value)
            group["lr"] = lr
        try:
            yield
        finally:
            for (group, _), value in zip(self.lrs, floats):
                group["lr"] = value
