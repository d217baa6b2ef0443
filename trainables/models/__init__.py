"""Generator and discriminator architectures, picked by `GANConfig.arch`."""
from trainables.models.dcgan import DCGANDiscriminator, DCGANGenerator
from trainables.models.resnet import ResNetDiscriminator, ResNetGenerator

ARCHITECTURES = {"dcgan": (DCGANGenerator, DCGANDiscriminator), "resnet": (ResNetGenerator, ResNetDiscriminator)}


def build_models(cfg):
    """(G, D) for a config; both initialised from torch's current RNG state."""
    generator, discriminator = ARCHITECTURES[cfg.arch]
    return generator(cfg), discriminator(cfg)


__all__ = ["ARCHITECTURES", "build_models", "DCGANGenerator", "DCGANDiscriminator", "ResNetGenerator",
           "ResNetDiscriminator"]
