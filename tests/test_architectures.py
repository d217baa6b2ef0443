"""DCGAN and SNGAN-ResNet generators/discriminators: shapes, block structure, width cap, spectral
norm, dropout and which resolutions each architecture accepts. Widths stay tiny to keep CPU time low."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from trainables.config import RESOLUTIONS, ConfigError, GANConfig
from trainables.models import build_models
from trainables.models.dcgan import DCGANDiscriminator, DCGANGenerator
from trainables.models.resnet import ResNetDiscriminator, ResNetGenerator
from trainables.training.batches import DeviceBatches
from trainables.training.cuda import make_step
from trainables.training.gan import build_training

Z = 8


def tiny(**changes) -> GANConfig:
    base = dict(z_dim=Z, g_width=4, d_width=4, resolution=32, batch_size=2)
    base.update(changes)
    return GANConfig(**base).validate()


def count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]


# --- (a) shapes and ranges at every supported resolution -------------------------------------------

ARCH_RESOLUTIONS = [(arch, r) for arch, rs in RESOLUTIONS.items() for r in rs]


README = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "search-spaces.md").read_text()  # the GANConfig table


def _documented_resolutions() -> dict[str, tuple[int, ...]]:
    """The README's config table: "| `data`, `resolution` | ...; `dcgan` 32, 64, ... px; `resnet` ... |"."""
    row = next(line for line in README.splitlines() if line.startswith("| `data`, `resolution` |"))
    return {arch: tuple(int(r) for r in re.findall(r"\d+", sizes))
            for arch, sizes in re.findall(r"`(\w+)` ([\d, ]+)", row)}


def test_supported_resolutions_are_the_documented_ones():
    # What validation accepts (RESOLUTIONS, and hence ARCH_RESOLUTIONS, which the shape tests build
    # and the refusal tests avoid) is what the README promises, architecture by architecture.
    assert _documented_resolutions() == RESOLUTIONS
    for arch in RESOLUTIONS:
        accepted = []
        for r in (8, 16, 32, 48, 64, 96, 128, 256, 512, 1024):
            try:
                accepted.append(GANConfig(arch=arch, resolution=r).validate().resolution)
            except ConfigError:
                pass
        assert tuple(accepted) == _documented_resolutions()[arch], arch


@pytest.mark.parametrize("arch,resolution", ARCH_RESOLUTIONS)
def test_generator_and_discriminator_shapes(arch, resolution):
    # Width 2 at 512 px keeps the biggest case cheap; 4 elsewhere.
    width = 2 if resolution >= 256 else 4
    torch.manual_seed(0)
    G, D = build_models(tiny(arch=arch, resolution=resolution, g_width=width, d_width=width))
    with torch.no_grad():
        images = G(torch.randn(2, Z))
        assert images.shape == (2, 3, resolution, resolution)
        assert images.abs().max() <= 1  # Tanh output
        assert D(images).shape == (2,)
        # D also takes real-looking images and gives one logit each.
        assert D(torch.rand(2, 3, resolution, resolution) * 2 - 1).shape == (2,)


# --- (b) DCGAN block counts (seed 000: 5 blocks at 128 px, 7 at 512 px) -----------------------------

@pytest.mark.parametrize("resolution,blocks", [(32, 3), (128, 5), (512, 7)])
def test_dcgan_block_counts_match_the_docstring(resolution, blocks):
    # A block is (transposed) conv + norm + activation; the output layers are not blocks.
    cfg = tiny(resolution=resolution, g_width=2, d_width=2, g_norm="batch", d_norm="instance", loss="wgan-gp")
    G, D = DCGANGenerator(cfg), DCGANDiscriminator(cfg)

    g_convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(g_convs) == blocks + 1  # blocks + the output ConvTranspose
    assert count(G, nn.BatchNorm2d) == blocks  # every G block has a norm, the output layer none
    assert count(G, nn.ReLU) == blocks and count(G, nn.Tanh) == 1
    assert g_convs[0].stride == (1, 1) and all(c.stride == (2, 2) for c in g_convs[1:])
    assert g_convs[-1].out_channels == 3

    d_convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert len(d_convs) == blocks + 1  # blocks + the output conv to one logit
    assert [c.stride for c in d_convs[:-1]] == [(2, 2)] * blocks
    assert d_convs[-1].stride == (1, 1) and d_convs[-1].out_channels == 1
    assert count(D, nn.InstanceNorm2d) == blocks - 1  # first block has no norm (DCGAN)
    assert count(D, nn.LeakyReLU) == blocks

    # The first D block has no norm: its conv is directly followed by the LeakyReLU.
    layers = list(D.net)
    assert isinstance(layers[0], nn.Conv2d) and isinstance(layers[1], nn.Identity)
    assert isinstance(layers[2], nn.LeakyReLU)


def test_dcgan_spatial_sizes_go_through_4x4():
    # G's first block makes 4x4 from z, D's last block leaves 4x4 for the 4x4 output conv.
    cfg = tiny(resolution=64)
    G, D = DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    with torch.no_grad():
        assert G.net[:3](torch.randn(2, Z)[:, :, None, None]).shape[-2:] == (4, 4)
        assert D.net[:-1](torch.zeros(2, 3, 64, 64)).shape[-2:] == (4, 4)


# --- (c) width cap ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,resolution", [("dcgan", 512), ("resnet", 128)])
def test_widths_are_capped_at_max_width(arch, resolution):
    documented_cap = int(re.search(r"widths double away from the image, capped at (\d+)", README).group(1))
    torch.manual_seed(0)
    G, D = build_models(GANConfig(arch=arch, resolution=resolution, z_dim=Z, g_width=64, d_width=64).validate())
    for model in (G, D):
        layers = weighted_layers(model)
        channels = [c for m in layers for c in ((m.in_features, m.out_features) if isinstance(m, nn.Linear)
                                                 else (m.in_channels, m.out_channels))]
        if arch == "resnet" and model is G:
            channels.remove(G.project.out_features)  # 4*4*width: the Linear's flat output, not channels
        # The documented cap is reached and never exceeded (64 * 2**6 = 4096 at 512 px without it).
        assert max(channels) == documented_cap
    if arch == "dcgan":
        # Layer by layer: doubling away from the image, stopping at the cap (G mirrors D).
        d_out = [m.out_channels for m in D.modules() if isinstance(m, nn.Conv2d)]
        g_out = [m.out_channels for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
        assert d_out == [64, 128, 256, 512, 512, 512, 512, 1]
        assert g_out == [512, 512, 512, 512, 256, 128, 64, 3]


# --- (d) spectral norm ------------------------------------------------------------------------------

def _singular_values(D: nn.Module) -> list[float]:
    with torch.no_grad():
        return [torch.linalg.matrix_norm(m.weight.flatten(1), ord=2).item() for m in weighted_layers(D)]


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_spectral_norm_bounds_every_discriminator_weight(arch):
    torch.manual_seed(0)
    _, D = build_models(tiny(arch=arch, d_norm="spectral", d_width=8))
    layers = weighted_layers(D)
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    # Each train-mode forward runs one power iteration; after a few dozen the estimate is tight.
    D.train()
    with torch.no_grad():
        for _ in range(30):
            D(torch.randn(2, 3, 32, 32))
    D.eval()
    sigmas = _singular_values(D)
    assert all(abs(s - 1) < 0.05 for s in sigmas), sigmas


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_without_spectral_norm_weights_are_not_normalised(arch):
    torch.manual_seed(0)
    _, D = build_models(tiny(arch=arch, d_norm="none", d_width=8))
    assert not any(parametrize.is_parametrized(m) for m in weighted_layers(D))
    sigmas = _singular_values(D)
    assert any(abs(s - 1) > 0.2 for s in sigmas), sigmas


# --- (e) dropout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_dropout_modules_follow_d_dropout(arch):
    # One Dropout after each D block that changes resolution: log2(32) - 2 = 3 at 32 px.
    _, D = build_models(tiny(arch=arch, d_dropout=0.3))
    drops = [m for m in D.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(m.p == 0.3 for m in drops)
    _, D0 = build_models(tiny(arch=arch, d_dropout=0.0))
    assert count(D0, nn.Dropout) == 0


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_dropout_is_random_in_train_mode_only(arch):
    torch.manual_seed(0)
    _, D = build_models(tiny(arch=arch, d_dropout=0.3, d_width=8))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        D.eval()
        assert torch.equal(D(x), D(x))
        D.train()
        assert not torch.equal(D(x), D(x))
    # Without dropout (and without batch statistics) train mode is deterministic too.
    _, D0 = build_models(tiny(arch=arch, d_dropout=0.0, d_width=8))
    D0.train()
    with torch.no_grad():
        assert torch.equal(D0(x), D0(x))


# --- (f) architecture choice ------------------------------------------------------------------------

def test_build_models_picks_the_configured_architecture():
    G, D = build_models(tiny(arch="resnet"))
    assert type(G) is ResNetGenerator and type(D) is ResNetDiscriminator
    G, D = build_models(tiny(arch="dcgan"))
    assert type(G) is DCGANGenerator and type(D) is DCGANDiscriminator
    assert GANConfig().arch == "dcgan"


# --- (g) resolutions the config refuses -------------------------------------------------------------

@pytest.mark.parametrize("arch,resolution", [("resnet", 512), ("resnet", 256), ("resnet", 48), ("dcgan", 48),
                                             ("dcgan", 16), ("dcgan", 1024)])
def test_unsupported_resolutions_are_refused(arch, resolution):
    with pytest.raises(ConfigError, match="resolution"):
        GANConfig(arch=arch, resolution=resolution).validate()


@pytest.mark.parametrize("arch,resolution", ARCH_RESOLUTIONS)
def test_every_resolution_that_validates_takes_a_training_step(arch, resolution):
    # What validation promises a trial: at every size it accepts, G makes images of that size and one
    # real training step (both losses, both optimisers) on a batch of real images of that size runs,
    # with finite losses, and moves both networks' weights.
    width = 2 if resolution >= 256 else 4
    cfg = tiny(arch=arch, resolution=resolution, g_width=width, d_width=width)
    run = build_training(cfg, torch.device("cpu"))
    with torch.no_grad():
        assert run.G(torch.randn(2, Z)).shape == (2, 3, resolution, resolution)
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in (("G", run.G), ("D", run.D))}
    real = np.random.default_rng(0).integers(0, 256, (4, 3, resolution, resolution), dtype=np.uint8)
    losses = make_step(cfg, run, DeviceBatches(real, torch.device("cpu")))(0.0)
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    for name, net in (("G", run.G), ("D", run.D)):
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters(), strict=True)), name
