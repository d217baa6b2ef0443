"""Does the sweep pay? The same compute given to three arms on real CIFAR-10 cats (32 px):

  (a) ASHA + TPE with the seed warm starts (search_spaces/wgangp.py as it ships),
  (b) FIFO random search, every trial its full budget (Optuna's random startup for all trials),
  (c) the best seed configuration of (a) alone, trained for (a)'s whole compute.

(a) runs first; its trial-seconds T set the budget of the others: (b) gets round(T / the mean
trial-seconds of a full-budget trial in (a)) trials, (c) round(T / its seconds per eval period)
eval periods. Prints, per arm: trials, trial-seconds used, the best `fid_final` (standard
Inception, `--final-samples` generated vs `--ref-samples` real images), and the trial-seconds the
arm needed to first reach the best per-eval FID that (c) reached in its budget (the per-eval FID is
the random-conv proxy on a CPU, so that target is a proxy number; cumulative trial-seconds = the sum over the arm's trials of
their time since start, read from MLflow's timestamps).

Run from the repository root: python bench/sweep_efficiency.py   (--gpu for a larger size; --help)
It writes into a temporary working directory (its own MLflow store and Ray results) and prints
figures; it asserts nothing.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10-catdog"
sys.path.insert(0, str(ROOT))

CPU = dict(num_samples=12, num_evals=6, steps_per_eval=50, width=16, batch=64, fid_samples=512,
           ref_samples=2000, final_samples=1000, top_k=2)
GPU = dict(num_samples=64, num_evals=20, steps_per_eval=500, width=64, batch=64, fid_samples=5000,
           ref_samples=5000, final_samples=10000, top_k=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU size (64 trials of 20 x 500 steps)")
    for key, value in CPU.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"CPU default {value}")
    args = parser.parse_args()
    size = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in (GPU if args.gpu else CPU).items()}
    if not DATA.is_dir():
        sys.exit(f"needs the CIFAR-10 cats at {DATA} (see ../shared/data/README.md)")
    os.chdir(tempfile.mkdtemp(prefix="sweep-efficiency-"))
    print(f"size: {size}; working directory {os.getcwd()}", flush=True)
    from sweeper.driver.loader import load_sweep

    shipped = load_sweep(ROOT / "search_spaces" / "wgangp.py")
    base = shipped.config.replace(
        data=f"{DATA}:cat", resolution=32, g_width=size["width"], d_width=size["width"], batch_size=size["batch"],
        steps_per_eval=size["steps_per_eval"], num_evals=size["num_evals"], fid_samples=size["fid_samples"],
        ref_samples=size["ref_samples"], final_fid_samples=size["final_samples"])
    rows = [run_arm("a_asha_tpe", shipped.with_(config=base, num_samples=size["num_samples"], name="bench-a"), size)]
    compute = rows[0]["trial_seconds"]

    full = rows[0]["table"][rows[0]["table"]["eval_periods"] == size["num_evals"]]
    n_random = max(1, round(compute / full["trial_seconds"].mean()))
    from sweeper import TPE

    random_search = shipped.with_(config=base, num_samples=n_random, name="bench-b", warm_start=(), scheduler=None,
                                  searcher=TPE(seed=1, n_startup_trials=n_random), max_concurrent=2)
    rows.append(run_arm("b_fifo_random", random_search, size))
    rows.append(run_arm("c_best_seed_alone", seed_alone(shipped, base, rows[0]["table"], compute), size))

    target = rows[2]["last_fid"]
    print(f"\nsame compute: {compute:.0f} trial-seconds for (a); target = the best per-eval FID (c) reached {target:.2f} "
          f"({rows[0]['eval_extractor']})")
    print("| arm | trials | trial-seconds | best fid_final | trial-seconds to reach the target |")
    print("|---|---|---|---|---|")
    for row in rows:
        reach = row["timeline"]
        first = next((t for t, fid in reach if fid <= target), None)
        print(f"| {row['arm']} | {row['trials']} | {row['trial_seconds']:.0f} | {row['fid_final']:.2f} "
              f"({row['final_extractor']}) | {'not reached' if first is None else f'{first:.0f}'} |")


def seed_alone(shipped, base, table, compute):
    """(c): the warm-start config with the lowest fid_final in (a), for (a)'s compute."""
    from ray import tune

    warm = table[table["warm_start"] == True].sort_values("fid_final")  # noqa: E712
    best = warm.iloc[0]
    params = {c.removeprefix("config."): _plain(best[c]) for c in table if c.startswith("config.") and best[c] == best[c]}
    per_period = best["trial_seconds"] / best["eval_periods"]
    periods = max(1, round(compute / per_period))
    print(f"(c): {params}, {periods} eval periods", flush=True)
    space = {k: tune.choice([v]) for k, v in params.items()}
    return shipped.with_(config=base.replace(num_evals=periods), space=space, warm_start=(params,), num_samples=1,
                         name="bench-c")


def _plain(value):
    return value.item() if hasattr(value, "item") else value  # numpy scalars from the table


def run_arm(arm: str, sweep, size: dict) -> dict:
    from sweeper.definition import FinalEval
    from sweeper.driver.run import run_sweep

    sweep = sweep.with_(final=FinalEval(top_k=size["top_k"])).validate()
    start = time.perf_counter()
    summary = run_sweep(sweep, sweep_file=f"bench/{arm}", quick=False)
    client = summary.tracking.client()
    timeline = _timeline(client, summary.tracking)
    table = summary.table
    row = {"arm": arm, "trials": len(table), "trial_seconds": float(table["trial_seconds"].sum()),
           "fid_final": summary.final_value, "final_extractor": summary.measured_on, "table": table,
           "timeline": timeline, "last_fid": timeline[-1][1] if timeline else float("nan"),
           "eval_extractor": dict(summary.tracking.child_tags)["sweeper.fid_extractor"]}
    print(f"[{arm}] {row['trials']} trials, {row['trial_seconds']:.0f} trial-seconds, best fid_final "
          f"{summary.final_value:.2f}, wall {time.perf_counter() - start:.0f} s", flush=True)
    return row


def _timeline(client, tracking) -> list[tuple[float, float]]:
    """(cumulative trial-seconds, best per-eval FID so far) at every eval of the arm, in wall order."""
    runs = client.search_runs([tracking.experiment_id], f"tags.`mlflow.parentRunId` = '{tracking.parent_run_id}'")
    spans, events = [], []
    for run in runs:
        history = sorted(client.get_metric_history(run.info.run_id, "fid"), key=lambda m: m.timestamp)
        if history:
            spans.append((run.info.start_time, history[-1].timestamp))
            events += [(m.timestamp, m.value) for m in history]
    timeline, best = [], float("inf")
    for when, fid in sorted(events):
        best = min(best, fid)
        used = sum(max(0, min(when, end) - begin) for begin, end in spans) / 1000
        timeline.append((used, best))
    return timeline


if __name__ == "__main__":
    main()
