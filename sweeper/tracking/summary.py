"""The files a sweep's parent run gets when the sweep ends (finished or interrupted): the trial table
(Parquet, CSV, HTML), the metric curves of every trial, the latest grids of the best five, and which
searched parameters mattered (sweeper.tracking.figures draws them)."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import pandas as pd

from sweeper.tracking import figures
from sweeper.tracking.runs import Tracking

log = logging.getLogger("sweeper")
TOP_GRIDS = 5


def log_summary(tracking: Tracking, sweep, table: pd.DataFrame, results, searcher, winner: str | None,
                final_metric: str | None, extra: dict[str, bytes] = None) -> None:
    """Write the files into the parent run, and the parameter importances as its metrics. A figure
    that cannot be drawn is logged and left out: the sweep's results matter more than its pictures.
    `final_metric`: the re-measured number that ranks the trials where it exists (None: none)."""
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
        client.log_metric(tracking.parent_run_id, key, value)


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
    """The latest sample grid of the five best trials, read back from their runs."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not a bar per grid on the console
    tiles = []
    searched = sorted(sweep.searched_keys())
    for _, row in figures.ranked(table, ranking, sweep.mode).head(TOP_GRIDS).iterrows():
        grids = sorted(a.path for a in client.list_artifacts(row["run_id"], "grids"))
        if not grids:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(client.download_artifacts(row["run_id"], grids[-1], tmp)).read_bytes()
        tiles.append((png, figures.grid_label(row, sweep.metric, searched, final_metric)))
    grid = figures.top_grids_png(tiles)
    return {"top_grids.png": grid} if grid else {}


def _told(searcher) -> bytes:
    """What the searcher was told of each trial: its state, value and intermediate values per eval
    period (the objective, `fid_best`), by Tune trial id: why TPE proposed what it did."""
    told = {trial_id: {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                       "intermediate": {str(step): v for step, v in t.intermediate_values.items()}}
            for trial_id, t in ((tid, searcher._ot_study._storage.get_trial(ot._trial_id))
                                for tid, ot in searcher._ot_trials.items())}
    return json.dumps(told, indent=1, default=str).encode()


def _importance(searcher, sweep, files: dict, metrics: dict) -> None:
    # The searcher's own Optuna study: its trials carry the distributions the importance needs.
    frame = figures.param_importance(searcher._ot_study, sorted(sweep.searched_keys()))
    files.update(figures.importance_files(frame))
    metrics.update(figures.importance_metrics(frame))
