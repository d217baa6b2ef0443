"""The files a sweep's parent run gets when the sweep ends (finished or interrupted): the trial table
(Parquet, CSV, HTML), the metric curves of every trial, the sample grids of the best five (each of
the checkpoint its numbers are of), and which searched parameters mattered (sweeper.tracking.figures
draws them)."""
from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path

import pandas as pd

from sweeper.compat import frozen_trial, optuna_study_of, optuna_trials_of
from sweeper.tracking import figures
from sweeper.tracking.runs import Tracking

log = logging.getLogger("sweeper")
TOP_GRIDS = 5
# In a trial run's final/: the sample grid its measured checkpoint holds (sweeper.driver.final logs it).
MEASURED_GRID = "grid.png"
PERIOD_GRID = re.compile(r"grids/eval_(\d+)\.png")  # each period's grid (sweeper.trial.delivery)


def log_summary(tracking: Tracking, sweep, table: pd.DataFrame, results, searcher, winner: str | None,
                final_metric: str | None, extra: dict[str, bytes] = None, timestamp: int | None = None) -> None:
    """Write the files into the parent run, and the parameter importances as its metrics. A figure
    that cannot be drawn is logged and left out: the sweep's results matter more than its pictures.
    `final_metric`: the re-measured number that ranks the trials where it exists (None: none);
    `timestamp` (ms): the metrics' (None: now)."""
    client, files, metrics = tracking.client(), dict(extra or {}), {}
    ranking = final_metric if final_metric and final_metric in table else sweep.metric
    parts = {
        "trial table": lambda: files.update(figures.trial_table_files(table, ranking, sweep.mode)),
        "curves": lambda: files.update({f"{sweep.metric}_curves.png": figures.fid_curves_png(
            _curves(results, sweep.metric), _outcomes(table), winner, sweep.metric, sweep.mode)}),
        "top grids": lambda: files.update(_top_grids(client, sweep, table, ranking, final_metric)),
        "importance": lambda: _importance(searcher, sweep, files, metrics),
        "searcher's trials": lambda: files.update({"searcher_trials.json": _told(searcher)}),
    }
    for what, part in parts.items():
        if table.empty and what != "trial table":
            continue
        try:
            part()
        except Exception as e:  # noqa: BLE001
            log.warning("parent run: %s left out (%s: %s)", what, type(e).__name__, str(e).splitlines()[0][:200])
    with tempfile.TemporaryDirectory() as tmp:
        table.to_parquet(Path(tmp) / "trials.parquet")
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        client.log_artifacts(tracking.parent_run_id, tmp)
    for key, value in metrics.items():
        client.log_metric(tracking.parent_run_id, key, value, timestamp=timestamp)


def _curves(results, metric: str) -> dict[str, pd.DataFrame]:
    curves = {}
    for result in results or ():
        history = result.metrics_dataframe
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id and history is not None and {"kimg", metric} <= set(history.columns):
            curves[trial_id] = history[["kimg", metric]]
    return curves


def _outcomes(table: pd.DataFrame) -> dict[str, str]:
    return dict(zip(table["trial_id"], table["outcome"]))


def _top_grids(client, sweep, table: pd.DataFrame, ranking: str, final_metric: str | None) -> dict[str, bytes]:
    """The sample grids of the five best trials, read back from their runs, each labelled with the
    period it is of (`trial_grid`)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not a bar per grid on the console
    tiles = []
    searched = sorted(sweep.searched_keys())
    for _, row in figures.ranked(table, ranking, sweep.mode).head(TOP_GRIDS).iterrows():
        shown = trial_grid(client, row, sweep.metric, sweep.mode)
        if shown is not None:
            png, which = shown
            tiles.append((png, [*figures.grid_label(row, sweep.metric, searched, final_metric), which]))
    grid = figures.top_grids_png(tiles)
    return {"top_grids.png": grid} if grid else {}


def trial_grid(client, row: pd.Series, metric: str, mode: str) -> tuple[bytes, str] | None:
    """(PNG, which grid it is) of the checkpoint a trial's numbers are of. A measured trial's: the
    grid its measured checkpoint holds (`final/grid.png`, of the table's `final_eval_period`), so
    the tile shows what its final numbers measured. An unmeasured one's: the grid of the period of
    its best `metric` (the number its label shows, and its best checkpoint's period); without that
    grid, its latest. None for a trial without a run or grids."""
    run_id = row.get("run_id")
    if not isinstance(run_id, str):
        return None
    measured = f"final/{MEASURED_GRID}"
    period = pd.to_numeric(row.get("final_eval_period"), errors="coerce")
    if math.isfinite(period) and measured in {a.path for a in client.list_artifacts(run_id, "final")}:
        return artifact_bytes(client, run_id, measured), f"grid: period {int(period)}, the measured checkpoint"
    periods = {int(m.group(1)): m.group(0) for a in client.list_artifacts(run_id, "grids")
               if (m := PERIOD_GRID.fullmatch(a.path))}
    if not periods:
        return None
    best = _best_period(client, run_id, metric, mode)
    if best in periods:
        return artifact_bytes(client, run_id, periods[best]), f"grid: period {best}, its best {metric}"
    return artifact_bytes(client, run_id, periods[max(periods)]), f"grid: period {max(periods)}, its latest"


def _best_period(client, run_id: str, metric: str, mode: str) -> int | None:
    # The step is the eval period; NaN (a diverged period) is never the best; of equals, the earliest.
    history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
    values = [(m.value, m.step) for m in history if math.isfinite(m.value)]
    if not values:
        return None
    return int((min if mode == "min" else max)(values, key=lambda v: v[0])[1])


def artifact_bytes(client, run_id: str, path: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_bytes()


def _told(searcher) -> bytes:
    """What the searcher was told of each trial: its state, value and intermediate values per eval
    period (the objective, `fid_best`), by Tune trial id: why TPE proposed what it did."""
    told = {trial_id: {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                       "intermediate": {str(step): v for step, v in t.intermediate_values.items()}}
            for trial_id, t in ((tid, frozen_trial(optuna_study_of(searcher), ot))
                                for tid, ot in optuna_trials_of(searcher).items())}
    return json.dumps(told, indent=1, default=str).encode()


def _importance(searcher, sweep, files: dict, metrics: dict) -> None:
    # The searcher's own Optuna study: its trials carry the distributions the importance needs.
    frame = figures.param_importance(optuna_study_of(searcher), sorted(sweep.searched_keys()))
    files.update(figures.importance_files(frame))
    metrics.update(figures.importance_metrics(frame))
