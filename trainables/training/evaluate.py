"""Between-step evaluation: samples from G, their FID and KID against the real data, and the sample grid."""
import numpy as np
import torch

from trainables.metrics import extract, feature_stats, frechet_distance, kernel_inception_distance
from trainables.training.checkpoint import load_generator


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def generated_batches(G, n: int, z_dim: int, seed: int, batch_size: int = 250):
    """n uint8 samples, batch by batch, so no caller holds them all. Uses its own RNG so evaluating
    never shifts the training RNG stream (exact resume depends on that); eval mode so batch-norm
    uses its running statistics."""
    device = next(G.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = G.training
    G.eval()
    try:
        for i in range(0, n, batch_size):
            yield to_uint8(G(torch.randn(min(batch_size, n - i), z_dim, device=device, generator=gen)))
    finally:
        G.train(was_training)


KID_SUBSETS = 10  # torch-fidelity uses 100 subsets of 1000 for a final number; per eval, 10 of <= 1000
# The final evaluation's two draws (sweeper.driver.final): "select" (`fid_select`, which picks the
# winner) and "report" (`fid_final`, the number reported), each with z of its own, other than every
# per-eval FID's (seed + 1) and than the other draw's: draw -> (FID's name, KID's name, seed offset).
FINAL_SEED_OFFSET = 1_000_003
SELECT_SEED_OFFSET = 2_000_003
DRAWS = {"select": ("fid_select", "kid_select", SELECT_SEED_OFFSET),
         "report": ("fid_final", "kid_final", FINAL_SEED_OFFSET)}


def fid_kid_of(G, n: int, z_dim: int, seed: int, extractor, ref_stats, batch_size: int = 250) -> dict:
    """FID and KID of n samples of G against the real data, from one pass of feature extraction.
    Only one batch of images exists at a time, on G's device; the features collect on the host."""
    batches = generated_batches(G, n, z_dim, seed, batch_size)
    feats = np.concatenate([extract(extractor, batch, batch_size) for batch in batches])
    mu, sigma = feature_stats(feats)
    return {"fid": frechet_distance(mu, sigma, ref_stats.mu, ref_stats.sigma),
            "kid": kernel_inception_distance(feats, ref_stats.features, subsets=KID_SUBSETS, seed=seed)}


def fid_kid(G, cfg, extractor, ref_stats) -> dict:
    """The per-eval FID and KID: `fid_samples` generated images, the same z every eval."""
    return fid_kid_of(G, cfg.fid_samples, cfg.z_dim, cfg.seed + 1, extractor, ref_stats)


def final_fid_kid(cfg, checkpoint_dir, extractor, ref_stats, draw: str = "report") -> tuple[dict, dict]:
    """A checkpoint's (EMA) generator on one draw of the final evaluation (see DRAWS): FID and KID of
    `final_fid_samples` images drawn with that draw's seed against `ref_stats`, under the draw's
    names (`fid_final`/`kid_final` for "report"); and a record of the draw (its z seed and count)."""
    fid, kid, offset = DRAWS[draw]
    G = load_generator(cfg, checkpoint_dir).to(extractor.device)
    seed = cfg.seed + offset
    metrics = fid_kid_of(G, cfg.final_fid_samples, cfg.z_dim, seed, extractor, ref_stats)
    return {fid: metrics["fid"], kid: metrics["kid"]}, {"z_seed": seed, "generated": cfg.final_fid_samples}


@torch.no_grad()
def save_grid(G, fixed_z: torch.Tensor, path) -> None:
    """The same z every eval, so grids of one trial (and of trials with equal z_dim and seed) compare."""
    was_training = G.training
    G.eval()
    images = G(fixed_z)
    G.train(was_training)
    from torchvision.utils import save_image  # torchvision loads its models and torch._dynamo: ~1.5 s

    save_image(images, path, nrow=int(np.sqrt(len(fixed_z))), normalize=True, value_range=(-1, 1))
