"""What became of each trial: a table for the parent run, each child run closed with its outcome,
and the hand-tuned baseline compared with the search on the final (re-measured) metric."""
from __future__ import annotations

import math

import pandas as pd

from sweeper.definition import without_generation
from sweeper.tracking.runs import Tracking, ended_at

COMPLETED, STOPPED, DIVERGED, ERROR, INTERRUPTED = "completed", "stopped-early", "diverged", "error", "interrupted"
NO_WINNER = "no-winner"  # a sweep (parent run) that ended without a trial to register
OOM = "oom"  # out of GPU memory: not retried (the same share would run out again); FAILED
REPLACED = "replaced"  # a population member's run whose model it gave up for another's checkpoint (PBT)
RUN_STATUS = {ERROR: "FAILED", OOM: "FAILED", INTERRUPTED: "KILLED"}  # every other outcome ends FINISHED
OUTCOME_TAG = "sweeper.outcome"


def end_run(client, run_id: str, outcome: str, end_time: int | None = None) -> None:
    """A run (a trial's or the sweep's parent) ended with its outcome: the tag, then the status it
    implies; at `end_time` (ms; None: now)."""
    client.set_tag(run_id, OUTCOME_TAG, outcome)
    client.set_terminated(run_id, status=RUN_STATUS.get(outcome, "FINISHED"), end_time=end_time)


def finite(column: pd.Series) -> pd.Series:
    """A mask of the rows whose value is a finite number (not NaN, inf or missing)."""
    return column.map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))


def trial_table(results, runs: dict, sweep, proposed_by: dict, warm_starts: dict, group) -> pd.DataFrame:
    """One row per trial: id, MLflow run, outcome, how it was proposed, whether it is a warm start
    and which, its group for the final evaluation (`group(cfg, warm_start)`, the kind's), best and
    last metric, eval periods done, config.

    `proposed_by` and `warm_starts` (trial id -> which warm start) are the searcher's record
    (SweepSearch.proposed_by, .warm_starts()): a trial is a warm start because it was proposed as
    one, never because its params equal one's (a TPE proposal may repeat them)."""
    rows, seen = [], set()
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id")
        if trial_id is None or result.config is None:
            # Failed before its first report (picked up from the MLflow runs below), or never
            # started: made by Tune just before a budget's stop ended the sweep.
            continue
        seen.add(trial_id)
        history = result.metrics_dataframe
        # A trial stopped (or failed) before its first eval period has no metric yet.
        series = history[sweep.metric] if history is not None and sweep.metric in history else pd.Series([math.nan])
        warm_start = trial_id in warm_starts
        rows.append({"trial_id": trial_id, "run_id": runs.get(trial_id), "outcome": _outcome(result, sweep),
                     "proposed_by": proposed_by.get(trial_id), "warm_start": warm_start,
                     "warm_start_index": warm_starts.get(trial_id),
                     "group": group(sweep.trial_config(result.config), warm_start),
                     f"best_{sweep.metric}": float(series.min() if sweep.mode == "min" else series.max()),
                     f"last_{sweep.metric}": float(series.iloc[-1]),
                     "eval_periods": int(metrics.get("eval_period", 0)), "kimg": float(metrics.get("kimg", 0)),
                     "trial_seconds": float(metrics.get("time_total_s", 0)),
                     "compute_s": float(metrics.get("compute_s", math.nan)),
                     "error": error_line(result.error),
                     **{f"config.{k}": v for k, v in without_generation(result.config).items()}})
    rows += [{"trial_id": t, "run_id": r, "outcome": ERROR} for t, r in runs.items() if t not in seen]
    return pd.DataFrame(rows)


def error_line(error: BaseException | None) -> str | None:
    """The original exception of a failed trial, on one line (Ray wraps it in a RayTaskError)."""
    if error is None:
        return None
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:300]


def why_nothing(table: pd.DataFrame, final_metric: str) -> str:
    """One line saying why no trial won: the outcomes, and the first error."""
    if table.empty:
        return "no trial ran"
    counts = ", ".join(f"{n} {o}" for o, n in table["outcome"].value_counts().items())
    if table["outcome"].isin([COMPLETED, STOPPED]).any():
        return f"no finished trial has a finite {final_metric} ({counts})"
    line = f"all {len(table)} trials failed or diverged ({counts})"
    errors = table["error"].dropna() if "error" in table else pd.Series(dtype=object)
    return line + (f"; first error: {errors.iloc[0]}" if len(errors) else "")


def _outcome(result, sweep) -> str:
    if result.error is not None or sweep.metric not in result.metrics:
        return ERROR
    if result.metrics.get(OOM):
        return OOM
    if result.metrics.get("diverged"):
        return DIVERGED
    # A trial that ended itself by its own rule (the classifier's reference, out of patience) completed.
    done = result.metrics.get("eval_period", 0) >= sweep.config.num_evals or result.metrics.get("out_of_patience")
    return COMPLETED if done else STOPPED


def mark_interrupted(table: pd.DataFrame, finished_trial_ids: set) -> pd.DataFrame:
    """After Ctrl-C: the trials Tune had not finished are `interrupted`, whatever they reported
    (an errored trial is finished: Tune tells the searcher of it)."""
    table = table.copy()
    table.loc[~table["trial_id"].isin(finished_trial_ids), "outcome"] = INTERRUPTED
    return table


def close_trial_runs(tracking: Tracking, table: pd.DataFrame) -> None:
    """Driver, once the trials are over: every trial's run gets its outcome. A run ended as its
    trial ended (sweeper.search.ending) keeps that end time; the others end now."""
    client, ended = tracking.client(), ended_at(tracking)
    for row in table.itertuples():
        if row.run_id is None or (isinstance(row.run_id, float) and math.isnan(row.run_id)):
            continue
        if isinstance(getattr(row, "proposed_by", None), str):
            client.set_tag(row.run_id, "sweeper.proposed_by", row.proposed_by)
        end_run(client, row.run_id, row.outcome, ended.get(row.run_id))


def baseline_gain(table: pd.DataFrame, metric: str, mode: str) -> tuple[float | None, float | None]:
    """(baseline, gain): the best `metric` among warm-start trials, and how much the best searched
    trial beats it (positive = the search found better than the hand-tuned configs; negative =
    it did not). None where either side has no measured trial."""
    if metric not in table or "warm_start" not in table:
        return None, None
    measured = table[finite(table[metric])]
    best = min if mode == "min" else max
    warm = measured[measured["warm_start"] == True][metric].tolist()  # noqa: E712 (a pandas mask)
    searched = measured[measured["warm_start"] == False][metric].tolist()  # noqa: E712
    if not warm:
        return None, None
    baseline = float(best(warm))
    if not searched:
        return baseline, None
    sign = 1 if mode == "min" else -1
    return baseline, sign * (baseline - float(best(searched)))


def baseline_trial(sweep, table: pd.DataFrame, metric: str, mode: str) -> tuple[str, str] | None:
    """(trial id, what it ran) of the baseline, the warm-start trial with the best finite `metric`:
    which warm start (the table's `warm_start_index`, the searcher's record), its searched params
    and what it fixed beyond the sweep's config (its overrides, and the sweep's own values that
    replaced a published config's). None without one; "" for what it ran where the record has no index."""
    if metric not in table or "warm_start" not in table:
        return None
    warm = table[finite(table[metric]) & (table["warm_start"] == True)]  # noqa: E712 (a pandas mask)
    if warm.empty:
        return None
    row = warm.loc[warm[metric].astype(float).idxmin() if mode == "min" else warm[metric].astype(float).idxmax()]
    # A column of indexes and Nones is a float column with NaN.
    i = row.get("warm_start_index")
    if i is None or (isinstance(i, float) and math.isnan(i)):
        return row["trial_id"], ""
    i = int(i)
    extra = sweep.warm_start_text(i)
    return row["trial_id"], f"warm_start[{i}] {sweep.warm_points[i]}" + (f"; {extra}" if extra else "")
