"""Data ingest benchmark on the real AFHQ-cat 128x128 photos (../shared/data/afhq-cat-128).

Measures, and prints (no asserts):
  1. prepare throughput (images/s): decode the JPEG folder and write the Arrow cache, with all
     workers and with workers=1;
  2. seconds to load the prepared set back from the cache, in this process and in a fresh Python,
     and a cache hit's seconds before (the content key: every file read and hashed) and after the
     stat index (the key from the folder's listing: nothing read), side by side;
  3. batch sampling: DeviceBatches.sample vs a torchvision ImageFolder + DataLoader pipeline over
     the same files, in batches/s and images/s, and their ratio;
  4. the same before/after cache-hit pair on a synthetic folder of --synthetic tiny PNGs, to show
     how both scale with the number of files.

Run from the repository root: python bench/data.py  (options: --help)
"""
import argparse
import os
import shlex
import shutil
import statistics
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
    return timed_prepare_of(DATA, resolution, workers)


def timed_prepare_of(source, resolution, workers):
    from trainables.data import prepare

    start = time.perf_counter()
    p = prepare(str(source), resolution, workers=workers, progress=False)
    return p, time.perf_counter() - start


def hit_pair(what, source, resolution, repeats, report, cold=False):
    """Cache-hit seconds before (content key) and after (stat index), alternating so that a
    neighbour's load on the shared machine falls on both alike. Both use today's listing code:
    "before" is today's prepare without its index record, which is what the index saves. `cold`: the source files' data
    is evicted from the OS page cache before each hit, as after a reboot or when the dataset is
    larger than memory (their metadata, which only stat reads, may stay cached)."""
    before, after = [], []
    for _ in range(repeats):
        for index, times in ((False, before), (True, after)):
            if cold:
                evict_from_page_cache(source)
            times.append(hit_seconds(source, resolution, index))
    before, after = statistics.median(before), statistics.median(after)
    how = ", file data not in page cache" if cold else ""
    report(f"   cache hit of {what}{how}, content key (before)", f"{before * 1e3:.0f} ms", "", f"(median of {repeats})")
    report(f"   cache hit of {what}{how}, stat index (after)", f"{after * 1e3:.0f} ms", "", f"(median of {repeats})")
    report("   ratio content key / stat index", f"{before / after:.1f}x")


def evict_from_page_cache(folder):
    # Per file, no root needed and nothing else on the machine is touched (unlike drop_caches).
    for f in Path(folder).rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def hit_seconds(source, resolution, index):
    """Seconds of one cache hit (asserted) of an already prepared source, with the stat index or
    without it: its records removed first, so the key is computed from the content as before the
    index existed (that prepare then records the listing again, for the next `index` hit)."""
    from trainables.data import prepare
    from trainables.data.stat_index import index_dir

    if not index:
        shutil.rmtree(index_dir(), ignore_errors=True)
    elif not list(index_dir().glob("*.json")):
        raise SystemExit("bench/data.py: no stat index record after a prepare (files modified just now?)")
    start = time.perf_counter()
    p = prepare(str(source), resolution, progress=False)
    seconds = time.perf_counter() - start
    assert p.from_cache, "expected a cache hit"
    return seconds


def synthetic_folder(root, n):
    """n distinct 16x16 noise PNGs in two classes, aged an hour: the stat index does not record
    files modified in the last seconds (see trainables.data.stat_index.RACY_NS)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    old = time.time_ns() - 3600 * 10**9
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
    for i in range(n):
        f = root / ("cat", "dog")[i % 2] / f"{i:06d}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(f)
        os.utime(f, ns=(old, old))
    return root


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
    parser.add_argument("--repeats", type=int, default=5, help="cache hits timed per figure (median)")
    parser.add_argument("--synthetic", type=int, default=20000, help="tiny files for section 4 (0: skip it)")
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
    # root): the fresh Python only removes the warm interpreter. A cache hit lists and stats the
    # source files and takes the content key from the stat index (the photos are old files, so
    # the first prepare recorded their listing); the images are memory-mapped.
    cached, secs = timed_prepare(res, w)
    report("2. load from cache, in process", f"{secs * 1e3:.0f} ms", "", f"(from_cache={cached.from_cache})")
    imports, secs = cold_load_seconds(res)
    report("   load from cache, fresh Python", f"{secs * 1e3:.0f} ms", f"+ {imports:.2f} s import")
    hit_pair(f"{n} photos", DATA, res, args.repeats, report)
    if hasattr(os, "posix_fadvise"):
        hit_pair(f"{n} photos", DATA, res, args.repeats, report, cold=True)
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

    if args.synthetic:
        folder = synthetic_folder(Path(cache) / "synthetic", args.synthetic)
        p, secs = timed_prepare_of(folder, 16, w)
        report(f"4. prepare {len(p.data)} synthetic 16x16 PNGs, workers={w}", f"{secs:.2f} s",
               f"{len(p.data) / secs:.0f} images/s")
        hit_pair(f"{len(p.data)} tiny files", folder, 16, args.repeats, report)
        if hasattr(os, "posix_fadvise"):
            hit_pair(f"{len(p.data)} tiny files", folder, 16, args.repeats, report, cold=True)

    print("\n| measurement | time or rate | throughput |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join([row[0].lstrip("0123456789. "), *row[1:]]) + " |")
    print("\ncommand:", shlex.join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
