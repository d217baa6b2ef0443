"""Data ingest benchmark on the real AFHQ-cat 128x128 photos (../shared/data/afhq-cat-128).

Measures, and prints (no asserts):
  1. prepare throughput (images/s): decode the JPEG folder and write the Arrow cache, with all
     workers and with workers=1;
  2. seconds to load the prepared set back from the cache, in this process and in a fresh Python;
  3. batch sampling: DeviceBatches.sample vs a torchvision ImageFolder + DataLoader pipeline over
     the same files, in batches/s and images/s, and their ratio.

Run from the repository root: python bench/data.py  (options: --help)
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "afhq-cat-128"
WARMUP = 5
sys.path.insert(0, str(ROOT))  # this checkout's trainables, not whichever one the venv installed
# Only the standard library at the top level: prepare's "spawn" workers re-run this module's top
# level, so importing torch (or making a temporary directory) here would be repeated in each one.


def timed_prepare(resolution, workers):
    from trainables.data import prepare

    start = time.perf_counter()
    p = prepare(str(DATA), resolution, workers=workers, progress=False)
    return p, time.perf_counter() - start


def cold_load_seconds(resolution):
    """Import and prepare() times in a fresh interpreter: no module, allocator or Arrow state reused."""
    code = ("import time; t0 = time.perf_counter()\n"
            "from trainables.data import prepare\n"
            "t1 = time.perf_counter()\n"
            f"p = prepare({str(DATA)!r}, {resolution}, progress=False)\n"
            "t2 = time.perf_counter()\n"
            "assert p.from_cache, 'expected a cache hit'\n"
            "print(t1 - t0, t2 - t1)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=os.environ, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def timed(draw, device, n):
    """Seconds for n calls of draw(), after WARMUP untimed ones."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(WARMUP):
        draw()
    sync()
    start = time.perf_counter()
    for _ in range(n):
        draw()
    sync()  # kernels are asynchronous: stop the clock when they are done
    return time.perf_counter() - start


def dataloader_batches(resolution, device, batch, workers):
    """draw() for the usual torchvision pipeline over the same files (its workers die with us)."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    steps = [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]
    if resolution != 128:  # the files are 128x128 already
        steps.insert(0, T.Resize((resolution, resolution)))
    dataset = ImageFolder(root=str(DATA / "train"), transform=T.Compose(steps))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0)

    def forever():  # --batches may exceed one epoch (80 batches of 64 here)
        while True:
            yield from loader

    it = forever()
    return lambda: next(it)[0].to(device, non_blocking=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args()
    if not (DATA / "train").is_dir():
        sys.exit(f"bench/data.py: real photos not found at {DATA} (expected train/cat/*.jpg); nothing measured")
    # The cache must be an empty directory before trainables is imported, so the first prepare
    # really decodes instead of hitting an entry left by an earlier run.
    cache = tempfile.mkdtemp(prefix="sweeper-bench-data-")
    os.environ["SWEEPER_CACHE"] = cache
    try:
        run(args, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run(args, cache):
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    res, w, rows = args.resolution, args.workers, []

    def report(label, figure, rate="", detail=""):
        print(" ".join(x for x in (f"{label}:", figure, rate, detail) if x))
        rows.append((label, figure, rate))

    # Read every file once so both prepare runs see the JPEGs in the OS page cache: the order of
    # the two runs then does not decide which one pays for the disk.
    for f in (DATA / "train").rglob("*.jpg"):
        f.read_bytes()
    print(f"SWEEPER_CACHE={cache}; os.cpu_count() {os.cpu_count()}; torch threads {torch.get_num_threads()}")

    p, secs = timed_prepare(res, w)
    n = len(p.data)
    report(f"1. prepare {n} images, workers={w}", f"{secs:.2f} s", f"{n / secs:.0f} images/s",
           f"(from_cache={p.from_cache}, {p.path.stat().st_size / 2**20:.0f} MiB Arrow file)")
    # Both load figures see the just-written Arrow file in the OS page cache (dropping it needs
    # root): the fresh Python only removes the warm interpreter. A cache hit still lists, reads
    # and hashes every source file (the cache key is their content); the images are memory-mapped.
    cached, secs = timed_prepare(res, w)
    report("2. load from cache, in process", f"{secs * 1e3:.0f} ms", "", f"(from_cache={cached.from_cache})")
    imports, secs = cold_load_seconds(res)
    report("   load from cache, fresh Python", f"{secs * 1e3:.0f} ms", f"+ {imports:.2f} s import")
    # workers=1 gets its own empty cache so it decodes instead of hitting the entry above.
    os.environ["SWEEPER_CACHE"] = tempfile.mkdtemp(dir=cache)
    p1, secs = timed_prepare(res, 1)
    report(f"   prepare {n} images, workers=1", f"{secs:.2f} s", f"{n / secs:.0f} images/s",
           f"(from_cache={p1.from_cache})")

    from trainables.training.batches import DeviceBatches

    batches = DeviceBatches(cached.data.images, device)
    secs = timed(lambda: batches.sample(args.batch), device, args.batches)
    ours = args.batches * args.batch / secs
    report(f"3. DeviceBatches.sample({args.batch}) on {device}", f"{args.batches / secs:.1f} batches/s",
           f"{ours:.0f} images/s", f"(resident={batches.resident})")
    secs = timed(dataloader_batches(res, device, args.batch, w), device, args.batches)
    theirs = args.batches * args.batch / secs
    report(f"   ImageFolder + DataLoader({w} workers) to {device}", f"{args.batches / secs:.1f} batches/s",
           f"{theirs:.0f} images/s")
    report("   ratio DeviceBatches / DataLoader", f"{ours / theirs:.2f}x")

    print("\n| measurement | time or rate | throughput |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join([row[0].lstrip("0123456789. "), *row[1:]]) + " |")
    print("\ncommand:", shlex.join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
