"""The training loop's details, each against an independent reference: the EMA of G's weights
(averaged by hand from the recorded G of every step) and `ema_start_kimg`, the instance-noise
annealing (the std D really sees, against the documented schedule), exact resume with the
linear-decay and step LR schedules (against an uninterrupted run and the documented formulas),
batch norm in D, and the host-memory batch path inside real training."""
import numpy as np
import pytest
import torch
from conftest import Recorder, Stopped

from sweeper.kinds.refstats import reference_stats
from trainables.config import GANConfig
from trainables.data import toy_faces
from trainables.metrics import RandomConvFeatures
from trainables.models import build_models
from trainables.models.dcgan import DCGANDiscriminator
from trainables.training import batches as batches_module
from trainables.training.checkpoint import CHECKPOINT_FILE, load_generator, load_generator_state
from trainables.training.evaluate import fid_kid
from trainables.training.gan import train_gan

BASE = GANConfig(resolution=32, z_dim=16, g_width=8, d_width=8, batch_size=16, steps_per_eval=2, num_evals=4,
                 fid_samples=64, ref_samples=128, loss="bce", device="cpu")
KIMG_PER_STEP = BASE.n_critic * BASE.batch_size / 1000  # 0.016


@pytest.fixture(scope="module")
def setup():
    data = toy_faces(128, 32, seed=0)
    extractor = RandomConvFeatures(seed=0)
    return data, extractor, reference_stats(data.images, data.fingerprint, extractor, BASE.ref_samples)


def _state(checkpoint_dir) -> dict:
    return torch.load(checkpoint_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["state"]


def _train(cfg, setup, root, *, stop_after=None, restore_from=None, images=None) -> Recorder:
    data, extractor, ref = setup
    report = Recorder(root, stop_after=stop_after)
    kwargs = dict(images=data.images if images is None else images, extractor=extractor, ref_stats=ref,
                  restore_from=restore_from)
    if stop_after is None:
        train_gan(cfg, report, **kwargs)
    else:
        with pytest.raises(Stopped):
            train_gan(cfg, report, **kwargs)
    return report


def _interrupted(cfg, setup, root, after: int) -> tuple[Recorder, Recorder]:
    """A run killed after `after` reports, then restored from its last checkpoint in a 'fresh process'."""
    first = _train(cfg, setup, root / "first", stop_after=after)
    torch.manual_seed(12345)  # nothing may depend on the RNG state before the restore
    return first, _train(cfg, setup, root / "resumed", restore_from=first.checkpoints[-1])


def _assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key}"


LOSS_KEYS = ("eval_period", "kimg", "loss_d", "loss_g", "fid", "kid", "lr_g")


def _losses(report: Recorder) -> list[dict]:
    return [{k: m[k] for k in LOSS_KEYS} for m in report.metrics]


# --- EMA and ema_start_kimg --------------------------------------------------------------------------

def test_ema_is_the_hand_computed_average_of_g_from_ema_start_kimg(setup, tmp_path):
    # One G step per eval period, so the checkpoints record G and the EMA after every step. kimg
    # after step k is 0.016 k: steps 1 and 2 (0.016, 0.032) are before ema_start_kimg = 0.04, where
    # the EMA must be G itself; from step 3 (0.048) on, ema_k = d ema_{k-1} + (1 - d) G_k. G has batch
    # norm, whose running statistics are averaged too (use_buffers).
    decay, start = 0.8, 0.04
    cfg = BASE.replace(steps_per_eval=1, num_evals=6, ema_decay=decay, ema_start_kimg=start, g_norm="batch")
    report = _train(cfg, setup, tmp_path)
    assert len(report.checkpoints) == 6
    prefix = "module."
    expected = None
    for k, directory in enumerate(report.checkpoints, start=1):
        state = _state(directory)
        g = state["G"]
        ema = {key[len(prefix):]: v for key, v in state["ema"].items() if key.startswith(prefix)}
        assert ema.keys() == g.keys()
        assert any("running_mean" in key for key in g)  # the buffers are part of the check
        if k * KIMG_PER_STEP < start:
            _assert_same_tensors(ema, g, f"step {k}: before ema_start_kimg the EMA is G")
            expected = {key: v.double() for key, v in g.items()}
            continue
        assert k >= 3
        expected = {key: decay * expected[key] + (1 - decay) * g[key].double() for key in g}
        for key, value in ema.items():
            if not value.is_floating_point():
                continue  # num_batches_tracked: an integer count, unused with BN's fixed momentum
            assert torch.allclose(value.double(), expected[key], rtol=1e-5, atol=1e-7), f"step {k}: {key}"
            # The average really lags G (the comparison above is not one of G with itself).
            if "weight" in key and k == 6:
                assert not torch.allclose(value, g[key], rtol=1e-5, atol=1e-7), key
        # The published generator is this EMA.
        _assert_same_tensors(load_generator_state(directory), ema, f"step {k}: published generator")

    # The reported FID was measured on the EMA generator (not on G).
    data, extractor, ref = setup
    last = report.checkpoints[-1]
    on_ema = fid_kid(load_generator(cfg, last), cfg, extractor, ref)["fid"]
    assert report.metrics[-1]["fid"] == pytest.approx(on_ema, rel=1e-6)
    G = build_models(cfg)[0]
    G.load_state_dict(_state(last)["G"])
    assert fid_kid(G, cfg, extractor, ref)["fid"] != pytest.approx(on_ema, rel=1e-6)


# --- instance noise ----------------------------------------------------------------------------------

def test_instance_noise_std_is_annealed_linearly_to_zero_over_the_whole_run_across_a_resume(setup, tmp_path):
    # Every real image is one flat grey: mirroring leaves it unchanged, so whatever spread D's real
    # input has is the instance noise. Its documented std: instance_noise at step 0, linearly to 0 at
    # the end of the run (num_evals * steps_per_eval steps), i.e. instance_noise * (1 - step / total).
    cfg = BASE.replace(instance_noise=0.5, steps_per_eval=2, num_evals=3, batch_size=32)
    total = cfg.num_evals * cfg.steps_per_eval
    flat = np.full((16, 3, 32, 32), 191, dtype=np.uint8)
    seen = []  # every input D gets during training: real then fake in D's step, fake in G's step

    def record(module, args):
        if isinstance(module, DCGANDiscriminator):
            seen.append(args[0].detach().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        first = _train(cfg, setup, tmp_path / "first", stop_after=1, images=flat)
        _train(cfg, setup, tmp_path / "resumed", restore_from=first.checkpoints[-1], images=flat)
    finally:
        handle.remove()
    assert len(seen) == 3 * total  # steps 0, 1 before the kill, 2 to 5 after the restore
    real = seen[0::3]
    measured = [x.std().item() for x in real]
    expected = [cfg.instance_noise * (1 - step / total) for step in range(total)]
    # ~100k draws per batch: the std's relative standard error is ~0.2%.
    assert measured == pytest.approx(expected, rel=0.03), (measured, expected)
    # Without instance noise D sees the flat image itself.
    seen.clear()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        _train(cfg.replace(instance_noise=0.0, num_evals=1), setup, tmp_path / "off", images=flat)
    finally:
        handle.remove()
    assert all(x.std().item() == 0 for x in seen[0::3])


# --- LR schedules across a resume ----------------------------------------------------------------

def _documented_lr(schedule: str, lr0: float, gamma: float, steps_done: int, total: int) -> float:
    if schedule == "linear-decay":  # to 0 at the end of the run
        return lr0 * (1 - steps_done / total)
    # step: multiplied by gamma at 50% and again at 75% of the run
    return lr0 * gamma ** ((steps_done >= total // 2) + (steps_done >= total * 3 // 4))


@pytest.mark.parametrize("schedule", ["linear-decay", "step"])
def test_resumed_lr_schedule_matches_the_uninterrupted_run_and_the_documented_schedule(setup, tmp_path, schedule):
    # Different G and D rates (TTUR), so a schedule restored onto the wrong optimiser shows; killed
    # after 2 of 4 periods, i.e. exactly at the step schedule's first milestone (step 4 of 8).
    cfg = BASE.replace(lr_schedule=schedule, g_lr=2e-4, d_lr=1e-4, lr_gamma=0.5, steps_per_eval=2, num_evals=4)
    total = cfg.num_evals * cfg.steps_per_eval
    straight = _train(cfg, setup, tmp_path / "straight")
    first, resumed = _interrupted(cfg, setup, tmp_path, after=2)
    assert _losses(first) + _losses(resumed) == _losses(straight)

    lrs = {name: [(_state(d)["opt_g"]["param_groups"][0]["lr"], _state(d)["opt_d"]["param_groups"][0]["lr"])
                  for d in directories]
           for name, directories in (("straight", straight.checkpoints),
                                     ("resumed", first.checkpoints + resumed.checkpoints))}
    assert lrs["resumed"] == lrs["straight"]
    for period, (lr_g, lr_d) in enumerate(lrs["straight"], start=1):
        steps_done = period * cfg.steps_per_eval
        assert lr_g == pytest.approx(_documented_lr(schedule, cfg.g_lr, cfg.lr_gamma, steps_done, total),
                                     rel=1e-6, abs=1e-15), (period, lr_g)
        assert lr_d == pytest.approx(_documented_lr(schedule, cfg.d_lr, cfg.lr_gamma, steps_done, total),
                                     rel=1e-6, abs=1e-15), (period, lr_d)
        assert straight.metrics[period - 1]["lr_g"] == lr_g
    # The schedule really moved the rate (so the comparisons above are not of constants).
    assert len({lr for lr, _ in lrs["straight"]}) >= 3


# --- batch norm in D ---------------------------------------------------------------------------------

def test_batch_norm_in_d_trains_on_batch_statistics_and_resumes_exactly(setup, tmp_path):
    cfg = BASE.replace(d_norm="batch", g_norm="batch", steps_per_eval=2, num_evals=3)
    modes = []

    def record(module, args):
        if isinstance(module, DCGANDiscriminator):
            modes.append(module.training)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        straight = _train(cfg, setup, tmp_path / "straight")
    finally:
        handle.remove()
    # D is in train mode on every call, so its batch norm normalises with the batch's statistics.
    assert len(modes) == 3 * cfg.num_evals * cfg.steps_per_eval and all(modes)
    d_states = [_state(c)["D"] for c in straight.checkpoints]
    stats = [k for k in d_states[0] if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * 2  # two normalised D blocks at 32 px (the first has none)
    for key in stats:  # the running statistics follow the batches: they move every period
        initial = torch.zeros_like(d_states[0][key]) if key.endswith("mean") else torch.ones_like(d_states[0][key])
        values = [initial] + [s[key] for s in d_states]
        assert all(not torch.equal(a, b) for a, b in zip(values, values[1:])), key

    # Exact resume: the same losses and FIDs, and the same D, running statistics included.
    first, resumed = _interrupted(cfg, setup, tmp_path, after=1)
    assert _losses(first) + _losses(resumed) == _losses(straight)
    _assert_same_tensors(_state(resumed.checkpoints[-1])["D"], d_states[-1], "D after the resumed run")
    _assert_same_tensors(_state(resumed.checkpoints[-1])["G"], _state(straight.checkpoints[-1])["G"], "G")


# --- the host-memory batch path in training ------------------------------------------------------

def test_host_memory_batches_train_exactly_like_resident_ones_and_resume(setup, tmp_path, monkeypatch):
    cfg = BASE.replace(steps_per_eval=2, num_evals=3, instance_noise=0.1, diffaugment="translation")
    resident = _train(cfg, setup, tmp_path / "resident")

    # What a GPU does when the set exceeds its budget: the set stays in host memory and each batch
    # is gathered into a staging buffer (DeviceBatches' fallback). On the CPU it must draw the same
    # random numbers in the same order, so training is bit-identical.
    budgets = []
    monkeypatch.setattr(batches_module, "default_device_budget", lambda device: budgets.append(device) or 0)
    first, resumed = _interrupted(cfg, setup, tmp_path / "host", after=1)
    assert budgets == [torch.device("cpu")] * 2  # both runs asked, and got no room: the host path
    assert _losses(first) + _losses(resumed) == _losses(resident)
    _assert_same_tensors(_state(resumed.checkpoints[-1])["G"], _state(resident.checkpoints[-1])["G"], "G")
