"""Between-step evaluation: samples from G, their FID and KID against the real data, and the sample grid."""
import numpy as np
import torch
from torchvision.utils import save_image

from trainables.metrics import extract, feature_stats, frechet_distance, kernel_inception_distance


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def generate(G, n: int, z_dim: int, seed: int, batch_size: int = 250) -> torch.Tensor:
    """n uint8 samples. Uses its own RNG so evaluating never shifts the training RNG stream
    (exact resume depends on that); eval mode so batch-norm uses its running statistics."""
    device = next(G.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = G.training
    G.eval()
    chunks = [to_uint8(G(torch.randn(min(batch_size, n - i), z_dim, device=device, generator=gen)))
              for i in range(0, n, batch_size)]
    G.train(was_training)
    return torch.cat(chunks)


KID_SUBSETS = 10  # torch-fidelity uses 100 subsets of 1000 for a final number; per eval, 10 of <= 1000


def fid_kid(G, cfg, extractor, ref_stats) -> dict:
    """FID and KID of `fid_samples` generated images against the real data, from one extraction."""
    feats = extract(extractor, generate(G, cfg.fid_samples, cfg.z_dim, seed=cfg.seed + 1))
    mu, sigma = feature_stats(feats)
    return {"fid": frechet_distance(mu, sigma, ref_stats.mu, ref_stats.sigma),
            "kid": kernel_inception_distance(feats, ref_stats.features, subsets=KID_SUBSETS, seed=cfg.seed)}


@torch.no_grad()
def save_grid(G, fixed_z: torch.Tensor, path) -> None:
    """The same z every eval, so grids of one trial (and of trials with equal z_dim and seed) compare."""
    was_training = G.training
    G.eval()
    images = G(fixed_z)
    G.train(was_training)
    save_image(images, path, nrow=int(np.sqrt(len(fixed_z))), normalize=True, value_range=(-1, 1))
