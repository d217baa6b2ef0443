"""The published configurations of the five seed projects this product grew from.

Installed with the package, so a search-space file warm-started from them runs from any folder
(copy `search_spaces/wgangp.py` anywhere and edit it). Each project's provenance and its own
sweep are in `search_spaces/seeds/<name>.py`.
"""
from trainables.config import GANConfig

# Seed 000: WGAN-GP on cat faces at 128x128.
seed000_wgangp_cat128 = GANConfig(
    data="toy-faces:cat", resolution=128, arch="dcgan", z_dim=200, g_width=64, d_width=64,
    g_norm="batch", d_norm="instance", loss="wgan-gp", gp_weight=10.0, n_critic=5,
    optimizer="adam", g_lr=8e-5, d_lr=1e-4, beta1=0.5, beta2=0.999, batch_size=64)


# Seed 001: DCGAN at 64x64 (Radford et al. 2015) with the project's optimisations.
seed001_dcgan64_tricks = GANConfig(
    data="toy-faces", resolution=64, arch="dcgan", z_dim=100, g_width=64, d_width=64,
    g_norm="batch", d_norm="batch", loss="bce", optimizer="adam", g_lr=2e-4, d_lr=2e-4,
    beta1=0.5, beta2=0.999, batch_size=128, lr_schedule="linear-decay", label_smoothing=0.1,
    d_dropout=0.3, instance_noise=0.1, mixed_precision=True)


# Seed 002: the Keras-tutorial DCGAN at 32x32 on CIFAR-10 dogs (and on cats+dogs).
seed002_dcgan32_cifar = GANConfig(
    data="toy-faces:dog", resolution=32, arch="dcgan", z_dim=100, g_width=64, d_width=64,
    g_norm="none", d_norm="none", d_dropout=0.4, loss="bce", optimizer="adam", g_lr=2e-4, d_lr=2e-4,
    beta1=0.5, beta2=0.999, batch_size=128)


# Seed 003: a dog-face GAN whose discriminator is trained with MSE (least squares, Mao et al. 2017).
seed003_lsgan_dog = GANConfig(
    data="toy-faces:dog", resolution=64, arch="dcgan", z_dim=100, g_width=64, d_width=64,
    g_norm="batch", d_norm="batch", loss="lsgan", optimizer="adam", g_lr=2e-4, d_lr=2e-4,
    beta1=0.5, beta2=0.999, batch_size=64)


# Seed 004: plain GAN, WGAN-GP and SNGAN side by side at 64x64, as in Miyato et al. 2018.
_seed004_base = GANConfig(data="toy-faces", resolution=64, arch="dcgan", z_dim=128, g_width=64, d_width=64,
                    g_norm="batch", d_norm="none", loss="bce", optimizer="adam", g_lr=2e-4, d_lr=2e-4,
                    beta1=0.5, beta2=0.999, batch_size=64)
seed004_gan_wgangp_sngan = {
    "gan": _seed004_base,
    "wgan-gp": _seed004_base.replace(loss="wgan-gp", n_critic=5, g_lr=1e-4, d_lr=1e-4, beta1=0.0, beta2=0.9),
    "sngan-bce": _seed004_base.replace(d_norm="spectral"),
    "sngan-hinge": _seed004_base.replace(d_norm="spectral", loss="hinge"),
    "sngan-resnet": _seed004_base.replace(arch="resnet", d_norm="spectral", loss="hinge", n_critic=5,
                                 beta1=0.0, beta2=0.9),
}
