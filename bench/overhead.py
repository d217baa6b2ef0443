"""Per-trial overhead: sweeper vs plain Ray Tune on the same trivial trainable (issue 22).

    python bench/overhead.py                      # 100 trials, 2 at a time, FIFO and the default scheduler
    python bench/overhead.py --trials 1000        # the 1,000-trial sweep: wall, memory, store, proposals
    python bench/overhead.py --arms plain,fifo    # a subset of the arms (plain, fifo, default, pauses)

Every arm runs the same work: a trial is `periods` eval periods of `work_s` seconds of sleep (the
minimum wall of the whole sweep is trials x periods x work_s / concurrency), a loss that depends on
one searched float `x`, TPE proposing it, every period's metrics in an MLflow sqlite store.

Arms (each in a fresh subprocess, a fresh Ray, a fresh store):
- plain: `tune.Tuner` + `OptunaSearch` (ConcurrencyLimiter) + `MLflowLoggerCallback`, FIFO;
- fifo: `python -m sweeper run` on the same function as a custom trainable (docs/guide/search-spaces.md, "Any trainable"),
  `scheduler=None`;
- default: the same with the scheduler sweeper fills in for a custom trainable (ASHA: a trial
  that lags at a rung is stopped);
- pauses: `scheduler=Promotion()` (a GAN sweep's default) with a trainable that checkpoints every
  period and goes on from its checkpoint, as a GAN does: every trial pauses at a rung and the
  promoted ones are resumed, each resumption a trial start of its own (`resumed_starts`).

Printed per arm: wall, overhead per trial ((wall - the work it ran / concurrency) x concurrency /
trials: a scheduler that stops trials runs fewer periods), the ratio to plain's, console lines, driver peak RSS, MLflow store size, and where a trial's seconds go, from what each trial's function records
(`where_the_time_goes`); with --after or >= 500 trials also `status`, `export`, the UI's runs
view and the searcher's time per proposal as the history grows.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The work, and a record of where each trial's process spent its time: one JSON line per eval
# period (pid, when the process started, when the trial's function started, how long its report
# call took, when it returned), appended to TIMES in the arm's folder.
WORK = """
import json, os, time

TIMES = os.path.join(os.environ["OVERHEAD_DIR"], "times.jsonl")

def _process_start() -> float:
    # /proc/self/stat's field 22 (starttime, clock ticks after boot); the fields after "(comm)" start at 3.
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")

PROCESS_START = _process_start()

def work(x: float, period: int, work_s: float) -> float:
    time.sleep(work_s)
    return (x - 3.0) ** 2 + 1.0 / period

def timed_report(report, fit_start: float, period: int, *args) -> None:
    before = time.time()
    try:
        report(*args)
    finally:
        with open(TIMES, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "process_start": PROCESS_START, "fit_start": fit_start,
                                "period": period, "report_start": before, "report_end": time.time()}) + "\\n")
"""

PLAIN = WORK + """
import json, sys, time
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

trials, concurrency, periods, work_s, store, uri = sys.argv[1:7]
trials, concurrency, periods, work_s = int(trials), int(concurrency), int(periods), float(work_s)

def trainable(config):
    fit_start = time.time()
    for period in range(1, periods + 1):
        timed_report(tune.report, fit_start, period, {"loss": work(config["x"], period, work_s), "eval_period": period})

started = time.perf_counter()
searcher = ConcurrencyLimiter(OptunaSearch(seed=0), max_concurrent=concurrency)
tuner = tune.Tuner(
    tune.with_resources(trainable, {"cpu": 1}), param_space={"x": tune.uniform(-10, 10)},
    tune_config=tune.TuneConfig(metric="loss", mode="min", search_alg=searcher, scheduler=FIFOScheduler(),
                                num_samples=trials, max_concurrent_trials=concurrency),
    run_config=tune.RunConfig(name="plain", storage_path=store, verbose=1,
                              callbacks=[MLflowLoggerCallback(tracking_uri=uri, experiment_name="plain")]))
results = tuner.fit()
print(json.dumps({"bench.wall_s": time.perf_counter() - started, "bench.errors": results.num_errors}))
"""

SPACE = """
from dataclasses import dataclass
from ray import tune
from sweeper import Promotion, Sweep
from trainables.config import Config

@dataclass(frozen=True)
class Trivial(Config):
    x: float = 0.0
    num_evals: int = {periods}
    work_s: float = {work_s}
    seed: int = 0

CHECKPOINTS = {checkpoints}

def fit(cfg, report, restore_from=None):
    import tempfile
    fit_start = time.time()
    start = int(open(os.path.join(restore_from, "period")).read()) + 1 if restore_from else 1
    for period in range(start, cfg.num_evals + 1):
        directory = None
        if CHECKPOINTS:  # a period's state, as a GAN's checkpoint, for the scheduler to pause and resume from
            directory = tempfile.mkdtemp()
            with open(os.path.join(directory, "period"), "w") as f:
                f.write(str(period))
        timed_report(report, fit_start, period, {{"eval_period": period, "loss": work(cfg.x, period, cfg.work_s)}}, directory)

sweep = Sweep("overhead", Trivial(), trainable=fit, metric="loss", mode="min",
              space={{"x": tune.uniform(-10, 10)}}, num_samples={trials}, max_concurrent={concurrency},
              {scheduler})
"""


def run_arm(arm: str, args, folder: Path) -> dict:
    """One arm in its own process; its wall, console and store as the process saw them."""
    store = folder / arm / "ray"
    uri = f"sqlite:///{folder / arm / 'mlflow.db'}"
    store.mkdir(parents=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "OVERHEAD_DIR": str(folder / arm),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if arm == "plain":
        script = folder / arm / "plain.py"
        script.write_text(PLAIN)
        command = [sys.executable, str(script), str(args.trials), str(args.concurrency), str(args.periods),
                   str(args.work_s), str(store), uri]
    else:
        space = folder / arm / "space.py"
        space.write_text(WORK + textwrap.dedent(SPACE.format(
            periods=args.periods, work_s=args.work_s, trials=args.trials, concurrency=args.concurrency,
            scheduler={"fifo": "scheduler=None", "pauses": "scheduler=Promotion()"}.get(arm, ""),
            checkpoints=arm == "pauses")))
        env["SWEEPER_STORAGE"] = str(store)
        command = [sys.executable, "-m", "sweeper", "run", str(space)]
    started, started_at = time.perf_counter(), time.time()
    process = subprocess.run(command, env=env, cwd=folder / arm, capture_output=True, text=True)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    console = (process.stdout + process.stderr).splitlines()
    (folder / arm / "console.txt").write_text("\n".join(console))
    db = folder / arm / "mlflow.db"
    breakdown = where_the_time_goes(folder / arm / "times.jsonl", started_at, wall, args)
    return {"arm": arm, "rc": process.returncode, "wall_s": wall, "console_lines": len(console),
            "driver_peak_rss_mib": usage.ru_maxrss / 1024,  # largest child so far (bench runs arms in order)
            "store_mib": db.stat().st_size / 2**20 if db.exists() else float("nan"),
            **breakdown, "tail": console[-5:] if process.returncode else []}


def where_the_time_goes(times: Path, started_at: float, wall: float, args) -> dict:
    """From the trials' own records. Per sweep: `before_first_trial` (the command's start to the
    first trial's function: start-up, preparation, Ray) and `after_last_trial` (the last report to
    the command's end: the driver's final steps). Per trial start (a paused trial resumed starts
    again), in the steady state between those two: `reports`, the time inside its report calls,
    and `between`, the rest of its share of the concurrency besides the work: a process started or
    reused, imports, what runs before and after the trial's function (MLflow run, spool), and the
    driver's scheduling and searching. A worker process Ray started ahead of its trial makes a
    process's own start time useless here, so none is used."""
    if not times.exists():
        return {}
    records = [json.loads(line) for line in times.read_text().splitlines() if line.strip()]
    starts = {(r["pid"], r["fit_start"]) for r in records}
    first_periods = {}
    for r in records:
        key = (r["pid"], r["fit_start"])
        first_periods[key] = min(first_periods.get(key, r["period"]), r["period"])
    n = len(starts)
    first = min(r["fit_start"] for r in records)
    last = max(r["report_end"] for r in records)
    reports = sum(r["report_end"] - r["report_start"] for r in records) / n
    work = len(records) * args.work_s / n  # a trial a scheduler stopped or paused did less than all its periods
    gaps = _gaps_before_starts(records)
    return {"trial_starts": n, "resumed_starts": sum(p > 1 for p in first_periods.values()),
            "gap_before_new_start_s": _median(gaps["new"]), "gap_before_resumed_start_s": _median(gaps["resumed"]),
            "processes": len({r["pid"] for r in records}), "periods_run": len(records),
            "per_trial_between_s": (last - first) * args.concurrency / n - work - reports,
            "per_trial_reports_s": reports, "per_trial_work_s": work,
            "before_first_trial_s": first - started_at, "after_last_trial_s": started_at + wall - last}


def _gaps_before_starts(records: list[dict]) -> dict[str, list[float]]:
    """In each process, the seconds from one trial function's last report to the next function's
    start, by whether that next start is a new trial or a paused one resumed: what a start costs
    in a reused process (the resumed one restores its checkpoint)."""
    starts = {}
    for r in records:
        start = starts.setdefault((r["pid"], r["fit_start"]), {"first": r["period"], "end": r["report_end"]})
        start["first"], start["end"] = min(start["first"], r["period"]), max(start["end"], r["report_end"])
    gaps = {"new": [], "resumed": []}
    for (pid, fit_start), start in sorted(starts.items(), key=lambda item: item[0][1]):
        before = [s["end"] for (p, f), s in starts.items() if p == pid and f < fit_start]
        if before:
            gaps["resumed" if start["first"] > 1 else "new"].append(fit_start - max(before))
    return gaps


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else float("nan")


def startup_costs() -> dict:
    """What a fresh trial process pays before its first period, measured alone (3 repeats, the
    median): importing what a Tune trial imports (plain) and what sweeper's trial imports."""
    def timed(code: str) -> float:
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
            runs.append(time.perf_counter() - started)
        return sorted(runs)[1]
    return {"import_ray_tune_s": timed("import ray.tune"),
            "import_sweeper_trial_s": timed("import ray.tune, sweeper.trial.trainable, sweeper.kinds")}


def after_the_sweep(arm_dir: Path, uri: str) -> dict:
    """What a person does next, timed on the store the arm left: `status`, `export`, and the runs
    view of the MLflow UI (`python -m sweeper ui`) until Chromium shows the trials' rows (skipped
    without Debian's chromium and Playwright)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "PYTHONPATH": str(ROOT)}
    figures = {}
    for command in (["status", "overhead"], ["export", "overhead", "-o", str(arm_dir / "trials.parquet")]):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "sweeper", *command], env=env, cwd=arm_dir, capture_output=True)
        figures[f"{command[0]}_s"] = time.perf_counter() - started if done.returncode == 0 else float("nan")
    figures["ui_runs_view_s"] = _ui_load_s(arm_dir, env)
    return figures


def _ui_load_s(arm_dir: Path, env: dict) -> float:
    import re
    import shutil
    import signal
    import socket
    import urllib.request

    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return float("nan")
    if chromium is None:
        return float("nan")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = arm_dir / "ui.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "sweeper", "ui", "--port", str(port)], cwd=arm_dir, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        url = re.search(rf"http://127.0.0.1:{port}/#/experiments/\d+/runs\S*", log.read_text())
        if url is None:
            return float("nan")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            started = time.perf_counter()
            page.goto(url.group(0))
            # A child run's row: the runs table shows the trials (their names are Tune's trial names).
            page.get_by_text(re.compile(r"^(run_trial|trial)_")).first.wait_for(timeout=120_000)
            loaded = time.perf_counter() - started
            page.screenshot(path=str(arm_dir / "ui_runs.png"))
            browser.close()
            return loaded
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def searcher_scaling(trials: int, concurrency: int, periods: int) -> list[tuple[int, float]]:
    """The searcher alone (real Optuna, sweeper's SweepSearch as a sweep builds it, the default
    scheduler's rung model): `trials` proposals, each told its periods, `concurrency` in flight.
    Returns (proposals made so far, mean ms per proposal over the last stretch) at a few points:
    TPE's cost grows with the history it models."""
    from ray import tune

    from sweeper import Promotion, Sweep
    from sweeper.kinds import complete
    from sweeper.search.tuner import build_searcher
    from trainables.config import GANConfig

    space = {"g_lr": tune.loguniform(1e-5, 1e-2), "d_lr": tune.loguniform(1e-5, 1e-2)}
    sweep = complete(Sweep("scaling", GANConfig(num_evals=periods), space=space, num_samples=trials,
                           scheduler=Promotion())).validate()
    searcher = build_searcher(sweep)
    searcher.set_search_properties(sweep.objective, "min", space)
    searcher.rungs, searcher.model_seed = (1, periods), 0
    marks, spent, since, in_flight = [], 0.0, 0, []
    for i in range(trials):
        started = time.perf_counter()
        config = searcher.suggest(f"t{i}")
        spent += time.perf_counter() - started
        in_flight.append((f"t{i}", config))
        if len(in_flight) >= concurrency:
            trial_id, config = in_flight.pop(0)
            value = (config["g_lr"] - 2e-4) ** 2 + (config["d_lr"] - 4e-4) ** 2
            for period in range(1, periods + 1):
                searcher.on_trial_result(trial_id, {sweep.objective: value + 1 / period, "eval_period": period})
            searcher.on_trial_complete(trial_id, {sweep.objective: value + 1 / periods, "eval_period": periods})
        if i + 1 in (10, 50, 100, 250, 500, 1000, 2000) or i + 1 == trials:
            marks.append((i + 1, 1000 * spent / (i + 1 - since)))
            spent, since = 0.0, i + 1
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--periods", type=int, default=3)
    parser.add_argument("--work-s", type=float, default=0.3)
    parser.add_argument("--arms", default="plain,fifo,default,pauses")
    parser.add_argument("--after", action="store_true", help="also time status, export and the UI's runs view "
                                                             "on each sweeper arm's store (default with --trials >= 500)")
    args = parser.parse_args()
    minimum = args.trials * args.periods * args.work_s / args.concurrency
    folder = Path(tempfile.mkdtemp(prefix="sweeper-overhead-"))
    print(f"{args.trials} trials x {args.periods} periods x {args.work_s} s, {args.concurrency} at a time: "
          f"minimum wall {minimum:.0f} s; {os.cpu_count()} cores; folders in {folder}")
    rows = []
    for arm in args.arms.split(","):
        row = run_arm(arm, args, folder)
        # Over the work it did: a scheduler that stops trials early runs fewer periods than FIFO.
        done = row.get("periods_run", args.trials * args.periods) * args.work_s / args.concurrency
        row["overhead_per_trial_s"] = (row["wall_s"] - done) * args.concurrency / args.trials
        if arm != "plain" and (args.after or args.trials >= 500) and not row["rc"]:
            row.update(after_the_sweep(folder / arm, f"sqlite:///{folder / arm / 'mlflow.db'}"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    plain = next((r for r in rows if r["arm"] == "plain"), None)
    for row in rows:
        ratio = f"{row['wall_s'] / plain['wall_s']:.2f}x plain" if plain and not plain["rc"] else ""
        if row["rc"]:
            print(f"{row['arm']:>8}: FAILED (exit {row['rc']}): " + " / ".join(row["tail"]))
            continue
        print(f"{row['arm']:>8}: {row['wall_s']:7.1f} s  {row['overhead_per_trial_s']:5.2f} s/trial over the work  "
              f"{ratio}  {row['console_lines']} console lines  store {row['store_mib']:.1f} MiB")
        if "trial_starts" in row:
            print(f"{'':>10}per trial start: {row['per_trial_between_s']:.2f} s between trials, reports "
                  f"{row['per_trial_reports_s']:.2f} s, work {row['per_trial_work_s']:.2f} s ({row['trial_starts']} trial "
                  f"starts of which {row['resumed_starts']} resumed, {row['periods_run']} periods, {row['processes']} processes); per sweep: {row['before_first_trial_s']:.0f} s before "
                  f"the first trial, {row['after_last_trial_s']:.0f} s after the last")
            print(f"{'':>10}in a reused process, from a trial's last report to the next start: new trial "
                  f"{row['gap_before_new_start_s']:.2f} s, resumed trial {row['gap_before_resumed_start_s']:.2f} s (medians)")
    for row in rows:
        if "status_s" in row:
            print(f"{row['arm']:>8}: status {row['status_s']:.1f} s, export {row['export_s']:.1f} s, "
                  f"UI runs view {row['ui_runs_view_s']:.1f} s")
    if args.trials >= 500:
        marks = searcher_scaling(args.trials, args.concurrency, args.periods)
        print("searcher alone, ms per proposal (proposals so far): "
              + ", ".join(f"{ms:.0f} ({n})" for n, ms in marks))
    print("a fresh process, alone (median of 3): " + ", ".join(f"{k} {v:.1f}" for k, v in startup_costs().items()))


if __name__ == "__main__":
    main()
