import itertools

import pytest
import torch

from trainables.config import ARCHS, D_NORMS, G_NORMS, LOSSES, LR_SCHEDULES, OPTIMIZERS, ConfigError, GANConfig
from trainables.models import build_models
from trainables.training.batches import DeviceBatches, sample_batch
from trainables.training.gan import build_training
from trainables.training.step import train_step


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("resolution", [32, 64])
def test_shapes_follow_resolution(resolution, arch):
    cfg = GANConfig(arch=arch, resolution=resolution, z_dim=16, g_width=8, d_width=8)
    G, D = build_models(cfg)
    images = G(torch.randn(3, 16))
    assert images.shape == (3, 3, resolution, resolution)
    assert images.abs().max() <= 1
    assert D(images).shape == (3,)


def _allowed_combinations():
    # Every arch x G norm x D norm x loss; optimisers and schedules rotate through the combinations.
    optimizers = itertools.cycle(OPTIMIZERS)
    schedules = itertools.cycle(LR_SCHEDULES)
    for arch, loss, g_norm, d_norm in itertools.product(ARCHS, LOSSES, G_NORMS, D_NORMS):
        cfg = GANConfig(arch=arch, loss=loss, g_norm=g_norm, d_norm=d_norm, optimizer=next(optimizers),
                        lr_schedule=next(schedules), momentum=0.5, resolution=32, z_dim=8, g_width=4,
                        d_width=4, batch_size=4, n_critic=2, steps_per_eval=1, num_evals=2)
        try:
            yield cfg.validate()
        except ConfigError:
            continue


def test_every_allowed_combination_takes_two_steps():
    configs = list(_allowed_combinations())
    # Only batch norm in a WGAN-GP critic is refused: once per arch and G norm.
    assert len(configs) == len(ARCHS) * len(LOSSES) * len(G_NORMS) * len(D_NORMS) - len(ARCHS) * len(G_NORMS)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8).numpy()
    batches = DeviceBatches(images, torch.device("cpu"))
    for cfg in configs:
        run = build_training(cfg, torch.device("cpu"))
        g_before = [p.detach().clone() for p in run.G.parameters()]
        d_before = {name: p.detach().clone() for name, p in run.D.named_parameters()}
        losses = []
        for _ in range(2):
            losses.append(train_step(cfg, run.G, run.D, run.opt_g, run.opt_d, batches))
            # G's update froze D (requires_grad False) and must have given it back: D trains on.
            assert all(p.requires_grad for p in run.D.parameters()), cfg
            assert all(p.requires_grad for p in run.G.parameters()), cfg
        assert torch.isfinite(torch.stack(losses)).all(), cfg
        assert any(not torch.equal(a, b) for a, b in zip(g_before, run.G.parameters())), cfg
        # D was updated too: its weights moved (every conv/linear weight gets a gradient from the D loss).
        d_after = dict(run.D.named_parameters())
        assert d_after.keys() == d_before.keys()
        moved = {name for name, p in d_after.items() if not torch.equal(p, d_before[name])}
        weights = {name for name in d_after if name.endswith(("weight", "weight.original"))
                   and d_after[name].dim() > 1}
        assert weights and weights <= moved, (cfg, sorted(weights - moved))


def test_batches_are_scaled_and_sampled_from_the_data():
    images = torch.full((4, 3, 8, 8), 255, dtype=torch.uint8)
    images[:, :, :, :4] = 0
    batch = sample_batch(images, 64)
    assert batch.shape == (64, 3, 8, 8)
    assert set(batch.unique().tolist()) == {-1.0, 1.0}
    # Half the rows are mirrored: left half dark in some samples, bright in others.
    left = batch[:, 0, 0, 0]
    assert (left == -1).any() and (left == 1).any()


def test_illegal_configs_are_refused_with_the_key_named():
    with pytest.raises(ConfigError, match="d_norm"):
        GANConfig(loss="wgan-gp", d_norm="batch").validate()
    with pytest.raises(ConfigError, match="resolution"):
        GANConfig(resolution=48).validate()
    with pytest.raises(ConfigError, match="loss"):
        GANConfig(loss="wasserstein").validate()
    with pytest.raises(ConfigError, match="unknown config key: 'lr'"):
        GANConfig().replace(lr=1e-3)
    with pytest.raises(ConfigError, match="resolution: 512 is not supported by arch 'resnet'"):
        GANConfig(arch="resnet", resolution=512).validate()
    with pytest.raises(ConfigError, match="label_smoothing"):
        GANConfig(loss="hinge", label_smoothing=0.1).validate()
    with pytest.raises(ConfigError, match="diffaugment"):
        GANConfig(diffaugment="color,blur").validate()
