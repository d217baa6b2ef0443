"""Packing trials on one GPU: the aggregate training throughput of k trials running at once.

For each k (1, 2, 4, 8 with --gpu; 1, 2 on the CPU) a real sweep runs through sweeper's own run
path (`sweeper.driver.run.run_sweep`: Ray Tune, the trial adapter with its memory cap, MLflow): k trials
of one config, all at once (max_concurrent = k, FIFO: none stopped), each with gpu_fraction 1/k on
a GPU (1 CPU each on the CPU). With --gpu a last sweep leaves the fraction "auto" (8 trials; what
the footprint measurement picks is printed by the run).

Printed per k, side by side in one run:
  train img/s  the sum over the trials of their median per-period `img_per_s` (real images shown
               to D per second of training, as each trial reports it; its first period, which
               includes warm-up, left out)
  trial img/s  the sum over the trials of kimg / trial seconds (everything a trial does: start-up,
               data upload, FID, checkpoints)
and each one's ratio to k = 1. The trials of one k start together and run the same config, so
they overlap: the sums are what the GPU (or the CPU cores) delivered at once.

Run from the repository root: python bench/packing.py   (--gpu for the GPU size; --help)
It works in a temporary directory (its own MLflow store and Ray results), uses the built-in
toy-faces data, and asserts nothing.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# DCGAN; the CPU size is small enough for 2 cores (~3 min in all), the GPU size is DCGAN-64.
CPU = dict(ks=(1, 2), resolution=32, width=16, batch=32, steps_per_eval=40, num_evals=3, fid_samples=256,
           ref_samples=128, final_samples=32)
GPU = dict(ks=(1, 2, 4, 8), resolution=64, width=64, batch=64, steps_per_eval=300, num_evals=3, fid_samples=1000,
           ref_samples=2000, final_samples=1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="GPU size: DCGAN-64, k = 1, 2, 4, 8, then 'auto'")
    parser.add_argument("--ks", type=str, default=None, help="comma-separated trial counts, e.g. 1,2,4")
    args = parser.parse_args()
    size = dict(GPU if args.gpu else CPU)
    if args.ks:
        size["ks"] = tuple(int(k) for k in args.ks.split(","))
    os.chdir(tempfile.mkdtemp(prefix="bench-packing-"))
    print(f"size: {size}; working directory {os.getcwd()}", flush=True)

    import torch

    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu: no CUDA device here")
    rows = [run_packed(k, size, args.gpu) for k in size["ks"]]
    if args.gpu:
        rows.append(run_packed(8, size, True, auto=True))
    device = torch.cuda.get_device_name(0) if args.gpu else f"CPU, {os.cpu_count()} cores"
    print(f"\npacked trials on one {'GPU' if args.gpu else 'machine'} ({device}); DCGAN {size['resolution']}x"
          f"{size['resolution']}, widths {size['width']}, batch {size['batch']}, {size['num_evals']} x "
          f"{size['steps_per_eval']} G steps per trial")
    # The load average: other processes on the machine take cores from the trials.
    print("| trials at once | gpu_fraction | train img/s (sum) | x k=1 | trial img/s (sum) | x k=1 | sweep wall s "
          "| load avg after |")
    print("|---|---|---|---|---|---|---|---|")
    base = rows[0]
    for row in rows:
        print(f"| {row['k']} | {row['fraction']} | {row['train']:,.0f} | {row['train'] / base['train']:.2f} "
              f"| {row['trial']:,.0f} | {row['trial'] / base['trial']:.2f} | {row['wall']:.0f} | {row['load']:.1f} |")


def run_packed(k: int, size: dict, gpu: bool, auto: bool = False) -> dict:
    from ray import tune

    from sweeper import FinalEval, Resources, Sweep
    from sweeper.driver.run import run_sweep
    from sweeper.kinds import complete
    from trainables.config import GANConfig

    config = GANConfig(resolution=size["resolution"], g_width=size["width"], d_width=size["width"],
                       batch_size=size["batch"], steps_per_eval=size["steps_per_eval"], num_evals=size["num_evals"],
                       fid_samples=size["fid_samples"], ref_samples=size["ref_samples"],
                       final_fid_samples=size["final_samples"])
    fraction = "auto" if auto else (round(1 / k, 4) if gpu else "auto")  # unused on a CPU-only machine
    sweep = complete(Sweep(f"packing-{'auto' if auto else f'k{k}'}", config,
                           # The learning rate does not change the work per step; the trials are k of one kind.
                           space={"g_lr": tune.loguniform(1e-4, 3e-4)}, num_samples=k,
                           max_concurrent=None if auto else k, scheduler=None, final=FinalEval(top_k=1),
                           resources=Resources(cpus=1, gpu_fraction=fraction))).validate()
    start = time.perf_counter()
    summary = run_sweep(sweep, sweep_file="bench/packing.py", quick=False)
    wall = time.perf_counter() - start
    client, table = summary.tracking.client(), summary.table
    train = 0.0
    for run_id in table["run_id"]:
        history = sorted(client.get_metric_history(run_id, "img_per_s"), key=lambda m: m.step)
        values = [m.value for m in history[1:]] or [m.value for m in history]
        train += statistics.median(values)
    trial = float((table["kimg"] * 1000 / table["trial_seconds"]).sum())
    row = {"k": "auto" if auto else k, "fraction": fraction if gpu else "- (CPU)", "train": train, "trial": trial,
           "wall": wall, "load": os.getloadavg()[0]}
    print(f"[k={row['k']}] train {train:,.0f} img/s, trial {trial:,.0f} img/s, sweep wall {wall:.0f} s, "
          f"load average {row['load']:.1f}", flush=True)
    return row


if __name__ == "__main__":
    main()
