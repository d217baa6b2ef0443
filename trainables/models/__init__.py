"""Generator and discriminator architectures, picked by `GANConfig.arch`."""
from trainables.models.dcgan import DCGANDiscriminator, DCGANGenerator


def build_models(cfg):
    """(G, D) for a config; both initialised from torch's current RNG state."""
    return DCGANGenerator(cfg), DCGANDiscriminator(cfg)


__all__ = ["build_models", "DCGANGenerator", "DCGANDiscriminator"]
