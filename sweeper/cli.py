"""`python -m sweeper COMMAND`: run, resume, data prepare, status, export, report and ui (`--help` lists them).

Bad input (a file, key or value) is one line on stderr and exit code 2, before anything starts.
Anything else is a bug or an outage: its traceback is printed (and kept in the sweep's parent
run), exit code 1.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import traceback

from trainables.errors import BadInput

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C (128 + SIGINT)
EXIT_NOTHING_TO_REGISTER = 1
EXIT_INTERNAL_ERROR = 1


# Usage statistics off unless the user opted in: setdefault, so an explicit value in the environment
# wins (MLFLOW_DISABLE_TELEMETRY=false, RAY_USAGE_STATS_ENABLED=1). Set in os.environ, not per call,
# so every process sweeper starts inherits it: Ray's raylets and trial workers, the `ui` server.
# DO_NOT_TRACK is left alone: MLflow reads it too, and setting it would override an MLflow opt-in.
NO_USAGE_STATS = {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}


def main(argv=None) -> int:
    for name, value in NO_USAGE_STATS.items():  # before anything imports Ray or MLflow
        os.environ.setdefault(name, value)
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except BadInput as e:  # the message already names the culprit
        print(f"sweeper: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        # A Ctrl-C outside Tune's own handler (data preparation, final evaluation, a second Ctrl-C):
        # run_sweep has closed the runs as KILLED and registered nothing.
        print("sweeper: interrupted; nothing registered (continue it: python -m sweeper resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print("sweeper: internal error (the traceback above); not a problem with your input", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeper", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    # In the order `--help` lists them.
    for add_command in (_add_run, _add_resume, _add_data, _add_status, _add_export, _add_report, _add_ui):
        add_command(commands)
    return parser


def _add_run(commands) -> None:
    run = commands.add_parser("run", help="run the sweep a search-space file defines")
    run.add_argument("file", help="search-space file, e.g. search_spaces/wgangp.py")
    run.add_argument("--quick", action="store_true", help="CPU-sized budget: few trials, 32 px, few evals")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a fixed config value (type-checked; repeatable)")
    run.add_argument("--num-samples", type=int, help="number of trials")
    run.add_argument("--data", help="dataset: toy-faces (default), a folder/.zip/.tar.gz of images "
                                    "(class = subfolder; SRC:cat selects one), or a known name (afhq-cat, cifar10:dog)")
    run.add_argument("--name", help="sweep name (MLflow experiment and registered model prefix)")
    run.add_argument("--budget", help="compute for the whole sweep: 2gpu-h, 600cpu-s or 5000kimg (device-seconds "
                                      "= wall time x GPUs or CPUs held); sets the rungs, the horizon and the trials")
    run.add_argument("--storage", help="Tune storage for checkpoints: a local path (default sweeps/ray_results), "
                                       "s3://bucket/prefix, gs://..., or a shared path; required on a cluster "
                                       "(env SWEEPER_STORAGE)")
    run.add_argument("--dry-run", action="store_true", help="validate and print the resolved sweep; start nothing")
    run.add_argument("--verbose", action="store_true", help="a line per eval period of every trial and Tune's table "
                                                            "every few minutes (default with --quick)")
    run.add_argument("--resume", action="store_true",
                     help="continue this sweep's latest interrupted run if there is one (else start it)")
    run.set_defaults(command=_run)


def _add_resume(commands) -> None:
    resume = commands.add_parser("resume", help="continue an interrupted sweep (the latest, or NAME's latest)")
    resume.add_argument("name", nargs="?", help="sweep name (or its experiment folder name); default: the latest")
    resume.add_argument("--storage", help="where the sweep ran (default sweeps/ray_results, or SWEEPER_STORAGE)")
    resume.set_defaults(command=_resume)


def _add_data(commands) -> None:
    data = commands.add_parser("data", help="datasets").add_subparsers(required=True, metavar="ACTION")
    prepare = data.add_parser("prepare", help="decode a dataset once into the cache (run does this too)")
    prepare.add_argument("source", metavar="SRC", help="folder, .zip, .tar(.gz), toy-faces or a known name; SRC:cat for one class")
    prepare.add_argument("--resolution", type=int, required=True, help="square size in pixels")
    prepare.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    prepare.set_defaults(command=_prepare)


def _add_status(commands) -> None:
    status = commands.add_parser("status", help="a sweep's trials (NAME's latest run; readable while it runs), "
                                                "or with no NAME the sweeps the MLflow store knows")
    status.add_argument("name", nargs="?", help="sweep name (its MLflow experiment)")
    status.set_defaults(command=_status)


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="write a sweep's trials (or, with --steps, its eval periods) "
                                                "to Parquet or CSV")
    export.add_argument("name", help="sweep name (its MLflow experiment); its latest run is exported")
    export.add_argument("-o", "--output", help="a .parquet (default: NAME-trials.parquet, NAME-steps.parquet "
                                               "with --steps) or .csv file")
    export.add_argument("--steps", action="store_true", help="one row per trial and eval period, every metric")
    export.set_defaults(command=_export)


def _add_report(commands) -> None:
    report = commands.add_parser("report", help="write a sweep's report: one self-contained HTML page (its trials' "
                                                "params, curves, importance and best samples; opens offline)")
    report.add_argument("name", help="sweep name (its MLflow experiment); its latest run is reported")
    report.add_argument("-o", "--output", help="the .html file (default: NAME-report.html)")
    report.add_argument("--top", type=int, default=10, help="sample grids of the N best trials (default 10)")
    report.set_defaults(command=_sweep_report)


def _add_ui(commands) -> None:
    ui = commands.add_parser("ui", help="open the MLflow UI on the sweep store (127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(command=_ui)


def _prepare(args) -> int:
    from trainables.data import prepare

    print(prepare(args.source, args.resolution, workers=args.workers).summary())
    return 0


def _run(args) -> int:
    from sweeper.driver.cluster import check_placement, storage_uri
    from sweeper.driver.loader import load_sweep
    from sweeper.driver.preflight import check_device
    from sweeper.kinds import kind_of
    from sweeper.tracking.runs import check_reachable, default_tracking_uri

    check_placement(args.storage, default_tracking_uri())
    check_reachable(default_tracking_uri())
    sweep = load_sweep(args.file).resolve(
        quick=args.quick, overrides=args.overrides, num_samples=args.num_samples, data=args.data, name=args.name,
        budget=args.budget)
    kind_of(sweep.config).check(sweep)
    check_device(sweep)  # a dry run too: it is the sweep's value, not the store, that is wrong
    if args.dry_run:
        print(describe(sweep, args.storage))
        return 0

    from sweeper.driver import resume
    from sweeper.driver.run import run_sweep  # imports Ray and MLflow: only when a sweep really runs

    if args.resume:
        unfinished = [s for s in resume.sweeps_in(storage_uri(args.storage))
                      if s.name == sweep.name and s.status != resume.FINISHED]
        if unfinished:
            print(f"--resume: continuing {unfinished[-1].path} as it was started "
                  f"(this command's other options are not applied)", flush=True)
            return _resume_state(unfinished[-1])
    summary = run_sweep(sweep, sweep_file=args.file, quick=args.quick, storage=storage_uri(args.storage),
                        verbose=args.verbose or args.quick)
    return _finish(summary)


def _resume(args) -> int:
    from sweeper.driver import resume
    from sweeper.driver.cluster import check_storage, storage_uri

    check_storage(args.storage)
    try:
        state = resume.resumable(storage_uri(args.storage), args.name)
    except resume.AlreadyFinished as e:
        print(f"sweeper: {e}")
        return 0
    return _resume_state(state)


def _resume_state(state) -> int:
    from sweeper.driver.run import resume_sweep  # checks the sweep's tracking server before anything else

    return _finish(resume_sweep(state))


def _finish(summary) -> int:
    print(_report(summary))
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return 0 if summary.winner is not None else EXIT_NOTHING_TO_REGISTER


def describe(sweep, storage: str | None = None) -> str:
    from sweeper.definition import Promotion
    from sweeper.driver.cluster import storage_uri
    from sweeper.kinds import kind_of
    from sweeper.tracking.runs import default_tracking_uri

    kind, searched = kind_of(sweep.config), sweep.searched_keys()
    lines = [f"sweep {sweep.name}: {sweep.num_samples} trials of {sweep.trainable.__name__}, "
             f"{sweep.mode}imising {sweep.metric}",
             "fixed config:", *(f"  {k} = {v!r}" for k, v in sweep.fixed_config().items()),
             "search space:", *_space_lines(sweep.space, searched),
             "warm start:", *(f"  {point}" + (f"; {text}" if (text := sweep.warm_start_text(i)) else "")
                              for i, point in enumerate(sweep.warm_points)),
             *(f"  {neighbour.text()}" for neighbour in sweep.enqueued_neighbours()),
             f"searcher: {sweep.searcher}", f"scheduler: {sweep.scheduler} on eval_period, max {sweep.config.num_evals}",
             f"objective: {sweep.objective} (the best {sweep.metric} a trial reached: rungs, searcher, final candidates)",
             f"budget: {sweep.budget or 'none'}"
             + (" (planned when the sweep starts: rungs, horizon and trials from the measured cost of a period)"
                if sweep.budget is not None and isinstance(sweep.scheduler, Promotion) else ""),
             f"resources per trial: {sweep.resources}, at most {sweep.max_concurrent or 'what fits (capped for TPE)'} at once",
             *kind.describe(sweep),
             f"final evaluation: the top {sweep.final.top_k} trials of each group, "
             f"{kind.final_metric or 'none (the best ' + sweep.metric + ' picks the winner)'}",
             f"mlflow: {default_tracking_uri()}", f"storage: {storage_uri(storage)}"]
    return "\n".join(lines)


def _short(value: float) -> str:
    """3 significant digits, or as many as it takes not to round to another value's look: an EMA
    decay of 0.9999 is not "1" (which would mean a frozen EMA)."""
    for digits in (3, 4, 5, 6):
        text = f"{value:.{digits}g}"
        if float(text) != round(value) or value == round(value):
            return text
    return repr(value)


def _space_lines(space, searched) -> list[str]:
    if callable(space):
        return [f"  define-by-run {space.__name__}(): {', '.join(sorted(searched))}"]
    return [f"  {k}: {_domain(d)}" for k, d in space.items()]


def _domain(domain) -> str:
    if hasattr(domain, "categories"):
        return f"choice {list(domain.categories)}"
    sampler = type(getattr(domain, "sampler", None)).__name__.lstrip("_").lower()
    return f"{type(domain).__name__.lower()} [{domain.lower}, {domain.upper}) {sampler}"


def _report(summary) -> str:
    outcomes = summary.table["outcome"].value_counts().to_dict() if len(summary.table) else {}
    lines = ["", f"trials: {len(summary.table)} ({', '.join(f'{n} {o}' for o, n in outcomes.items())})"]
    if summary.interrupted:
        return "\n".join(lines + [
            "sweep interrupted: nothing registered; the parent run and the unfinished trials' runs are KILLED.",
            f"continue it: python -m sweeper resume {summary.sweep_name}{_storage_option(summary.experiment_path)}",
            f"MLflow store: {summary.tracking.uri}"])
    if summary.winner is None:
        from sweeper.tracking.outcomes import why_nothing

        return "\n".join(lines + [f"nothing registered: {why_nothing(summary.table, summary.final_metric)}",
                                  f"MLflow store: {summary.tracking.uri}"])
    config = ", ".join(f"{k}={_short(v)}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.best_config.items())
    measured_on = f"  ({summary.measured_on})" if summary.measured_on else ""
    row = summary.table[summary.table["trial_id"] == summary.winner].iloc[0]
    per_eval = next((c for c in summary.table.columns if c.startswith("best_") and c != summary.final_metric), None)
    also = f"; best per-eval {per_eval[5:]} {row[per_eval]:.4g}" if per_eval else ""
    low, high = row.get(f"{summary.final_metric}_low"), row.get(f"{summary.final_metric}_high")
    interval = f" [95% {low:.4g}, {high:.4g}]" if isinstance(low, float) and isinstance(high, float) else ""
    lines += [f"best trial: {summary.winner}  {summary.final_metric} {summary.final_value:.4g}{interval}{measured_on}{also}",
              f"best config: {config}", *summary.lines]
    if summary.model is not None:
        lines.append(f"registered model: models:/{summary.model}/{summary.model_version}; @best {summary.alias_decision}")
    lines += [f"MLflow store: {summary.tracking.uri}",
              f"open the UI: python -m sweeper ui   (the runs: http://127.0.0.1:5000/{summary.runs_view})"]
    return "\n".join(lines)


def _storage_option(experiment_path: str) -> str:
    from sweeper.driver.cluster import storage_uri
    from sweeper.driver.resume import split_experiment_path

    storage = split_experiment_path(experiment_path)[0]
    return "" if storage == storage_uri(None) else f" --storage {storage}"


def _status(args) -> int:
    from sweeper.tracking.report import status

    print(status(args.name))
    return 0


def _export(args) -> int:
    from sweeper.tracking.report import export

    print(export(args.name, args.output or f"{args.name}-{'steps' if args.steps else 'trials'}.parquet",
                 steps=args.steps))
    return 0


def _sweep_report(args) -> int:
    from sweeper.tracking.sweep_report import write_report

    print(write_report(args.name, args.output or f"{args.name}-report.html", top=args.top))
    return 0


def _ui(args) -> int:
    from sweeper.tracking import report
    from sweeper.tracking.runs import SWEEPS_DIR, default_tracking_uri, local_artifact_root

    uri = default_tracking_uri()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", "127.0.0.1", "--port", str(args.port)]
    if uri.startswith("sqlite:"):
        SWEEPS_DIR.mkdir(parents=True, exist_ok=True)
        command += ["--default-artifact-root", local_artifact_root()]
    print(f"MLflow UI for {uri} on http://127.0.0.1:{args.port}", flush=True)
    client, exists = report.connect(uri)
    sweeps = report.known_sweeps(client) if exists else []
    if sweeps:
        print(f"sweep {sweeps[-1].name}: http://127.0.0.1:{args.port}/{report.save_runs_view(client, sweeps[-1])}",
              flush=True)
    # MLflow 3 also starts a job runner (worker processes for its GenAI jobs) that sweeps never use.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    return subprocess.call(command, env=env)
