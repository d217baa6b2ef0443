"""What became of each trial: a table for the parent run, and each child run closed with its outcome."""
import math

import pandas as pd

from sweeper.tracking import Tracking

COMPLETED, STOPPED, DIVERGED, ERROR = "completed", "stopped-early", "diverged", "error"


def trial_table(results, runs: dict, sweep) -> pd.DataFrame:
    """One row per trial: id, MLflow run, outcome, best and last metric, eval periods done, config."""
    rows, seen = [], set()
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id")
        if trial_id is None:
            continue  # failed before its first report; picked up from the MLflow runs below
        seen.add(trial_id)
        series = result.metrics_dataframe[sweep.metric]
        rows.append({"trial_id": trial_id, "run_id": runs.get(trial_id), "outcome": _outcome(result, sweep),
                     f"best_{sweep.metric}": float(series.min() if sweep.mode == "min" else series.max()),
                     f"last_{sweep.metric}": float(series.iloc[-1]),
                     "eval_periods": int(metrics.get("eval_period", 0)), "kimg": float(metrics.get("kimg", 0)),
                     **{f"config.{k}": v for k, v in result.config.items()}})
    rows += [{"trial_id": t, "run_id": r, "outcome": ERROR} for t, r in runs.items() if t not in seen]
    return pd.DataFrame(rows)


def _outcome(result, sweep) -> str:
    if result.error is not None:
        return ERROR
    if result.metrics.get("diverged"):
        return DIVERGED
    return COMPLETED if result.metrics.get("eval_period", 0) >= sweep.config.num_evals else STOPPED


def close_trial_runs(tracking: Tracking, table: pd.DataFrame, runs: dict) -> None:
    """Driver: trials ASHA stopped never get to close their own run, so the driver closes them all."""
    client = tracking.client()
    for row in table.itertuples():
        if row.run_id is None:
            continue
        client.set_tag(row.run_id, "sweeper.outcome", row.outcome)
        client.set_terminated(row.run_id, status="FAILED" if row.outcome == ERROR else "FINISHED")


def baseline(table: pd.DataFrame, sweep) -> float | None:
    """The best metric among the warm-start (hand-tuned) trials, or None if none of them ran."""
    column = f"best_{sweep.metric}"
    values = [row[column] for _, row in table.iterrows()
              if row["outcome"] != ERROR and any(_matches(row, sweep.warm_start_params(i))
                                                 for i in range(len(sweep.warm_start)))]
    if not values:
        return None
    return float(min(values) if sweep.mode == "min" else max(values))


def _matches(row, params: dict) -> bool:
    def same(a, b):
        return math.isclose(a, b, rel_tol=1e-9) if isinstance(b, float) else a == b
    return all(f"config.{k}" in row and same(row[f"config.{k}"], v) for k, v in params.items())
