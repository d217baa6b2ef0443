"""A PBT sweep's lineage, read back from MLflow: which member each checkpoint came from and the
schedule the winner actually trained with.

The record it reads (the trial code writes it, with these tags): every PBT member (a Tune trial) has
one child run of the sweep's parent run per generation. Generation 0 starts with the member; each
exploit (the member restarts from another member's checkpoint with mutated hyperparameters) starts
a new child run tagged with the donor's run and trial and the eval period of the checkpoint it
copied. Each run's params are the config it trains with; its metrics are logged at step = eval
period, a clone's first step being `cloned_at + 1`, so a member's curve is the chain of its runs.
A run without GENERATION_TAG is a non-PBT trial's run: generation 0, no donor.

What it writes on the parent run: `lineage.parquet` (one row per run) and `lineage.png` (the
population over time, the exploit edges, the winner's path and its schedule); `schedule_json` is
what retraining the winner without PBT needs.
"""
from __future__ import annotations

import io
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps, ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sweeper.tracking import figures
from sweeper.tracking.report import inferred_type, typed
from sweeper.tracking.runs import GENERATION_TAG, PARENT_TAG, TRIAL_TAG, Tracking

log = logging.getLogger("sweeper")

# GENERATION_TAG ("0", "1", ...: how many exploits a member has had) lives in runs.py, whose
# trial_run_id finds a generation's run by it; exported here with the other lineage tags.
CLONED_FROM_RUN_TAG = "sweeper.cloned_from_run"  # generation >= 1: the donor's run, whose checkpoint was copied
CLONED_FROM_TRIAL_TAG = "sweeper.cloned_from_trial"  # generation >= 1: the donor's trial id
CLONED_AT_TAG = "sweeper.cloned_at"  # generation >= 1: the eval period of the donor's checkpoint
TABLE_FILE, FIGURE_FILE = "lineage.parquet", "lineage.png"
ON_WINNER_PATH = "on_winner_path"
RUN_COLUMNS = ["trial_id", "generation", "run_id", "cloned_from_trial", "cloned_from_run", "cloned_at",
               "first_period", "last_period"]
LEGEND_ROWS = 16  # members in one legend column; more take a second one

History = list[tuple[int, float]]  # (eval period, metric value), by period


class BrokenLineage(ValueError):
    """A chain that cannot be walked: a donor run that is not in the table, or a checkpoint period
    outside the run it is said to be of."""


# -- the table -------------------------------------------------------------------------------------

def lineage_table(tracking: Tracking, keys: list[str], metric: str, mode: str = "min") -> pd.DataFrame:
    """One row per child run of the sweep, by trial id then generation: RUN_COLUMNS, `last_<metric>`
    and `best_<metric>` (best by `mode`, of the finite values; NaN without one), and one column per
    key: the run's param, typed back as report.py types a param it has no config class for (a
    column of ints is nullable Int64; one whose values are not all numbers or booleans stays text;
    a run without the param has a missing value). `attrs` keeps `keys` and `metric`."""
    runs = _sweep_runs(tracking)
    histories = _histories(tracking, runs, metric)
    return _table(runs, histories, keys, metric, mode)


def _sweep_runs(tracking: Tracking) -> list:
    """The sweep's trial runs, found as runs.child_runs finds them, but all of each trial's runs."""
    runs = tracking.client().search_runs(
        [tracking.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{tracking.parent_run_id}'",
        max_results=10_000)
    return [r for r in runs if TRIAL_TAG in r.data.tags]


def _histories(tracking: Tracking, runs: list, metric: str) -> dict[str, History]:
    client = tracking.client()
    return {r.info.run_id: _history(client.get_metric_history(r.info.run_id, metric)) for r in runs}


def _history(entries: list) -> History:
    """By period; of two values at one period (a retried period logged again), the later one."""
    latest = {}
    for m in sorted(entries, key=lambda m: (m.step, m.timestamp)):
        latest[int(m.step)] = float(m.value)
    return sorted(latest.items())


def _table(runs: list, histories: dict[str, History], keys: list[str], metric: str, mode: str) -> pd.DataFrame:
    rows = [{**_run_columns(r), **_metric_columns(histories[r.info.run_id], metric, mode)} for r in runs]
    table = pd.DataFrame(rows, columns=[*RUN_COLUMNS, f"last_{metric}", f"best_{metric}"])
    table = table.astype({"generation": "int64", "cloned_at": "Int64", "first_period": "Int64",
                          "last_period": "Int64", f"last_{metric}": "float64", f"best_{metric}": "float64"})
    for key in keys:
        table[key] = _typed_column([r.data.params.get(key) for r in runs])
    table = table.sort_values(["trial_id", "generation"], kind="stable").reset_index(drop=True)
    table.attrs.update(keys=list(keys), metric=metric)
    return table


def _run_columns(run) -> dict:
    tags = run.data.tags
    cloned_at = tags.get(CLONED_AT_TAG)
    return {"trial_id": tags[TRIAL_TAG], "generation": int(tags.get(GENERATION_TAG, 0)), "run_id": run.info.run_id,
            "cloned_from_trial": tags.get(CLONED_FROM_TRIAL_TAG), "cloned_from_run": tags.get(CLONED_FROM_RUN_TAG),
            "cloned_at": None if cloned_at is None else int(cloned_at)}


def _metric_columns(history: History, metric: str, mode: str) -> dict:
    finite = [v for _, v in history if math.isfinite(v)]
    best = (min if mode == "min" else max)(finite) if finite else math.nan
    return {"first_period": history[0][0] if history else None, "last_period": history[-1][0] if history else None,
            f"last_{metric}": history[-1][1] if history else math.nan, f"best_{metric}": best}


def _typed_column(texts: list) -> pd.Series:
    kind = inferred_type(texts)
    dtype = {int: "Int64", float: "float64", bool: "boolean"}.get(kind)  # text: pandas' own string dtype
    return pd.Series([typed(t, kind) for t in texts], dtype=dtype)


def _key_columns(table: pd.DataFrame) -> list[str]:
    """The param columns: `attrs["keys"]`, or for a table that lost its attrs, what is not a run,
    metric or winner column."""
    if "keys" in table.attrs:
        return list(table.attrs["keys"])
    return [c for c in table.columns
            if c not in RUN_COLUMNS and c != ON_WINNER_PATH and not c.startswith(("last_", "best_"))]


# -- the chain -------------------------------------------------------------------------------------

def chain_to(table: pd.DataFrame, run_id: str, period: int) -> list[dict]:
    """The segments of the model a checkpoint of `run_id` at eval `period` holds, oldest first,
    found by walking back through `cloned_from_run`. A segment trained periods from_period..to_period
    (both included) in its run, with that run's `values` (its key params, missing ones left out):
    from_period is its own cloned_at + 1 (1 for generation 0), to_period its child's cloned_at (the
    last segment's: `period`). BrokenLineage where a donor is not in the table, or a period is
    before the run it is said to be of began."""
    rows = {row["run_id"]: row for row in table.to_dict("records")}
    keys = _key_columns(table)
    chain, to_period, current = [], int(period), run_id
    while True:
        row = _row_of(rows, current, chain)
        segment = _segment(row, keys, to_period)
        if segment["to_period"] < segment["from_period"]:
            raise BrokenLineage(f"lineage: run {current} (trial {row['trial_id']}) starts at period "
                                f"{segment['from_period']}, so it has no checkpoint of period {to_period}")
        chain.insert(0, segment)
        if pd.isna(row["cloned_from_run"]):
            return chain
        current, to_period = row["cloned_from_run"], int(row["cloned_at"])


def _row_of(rows: dict, run_id: str, later: list[dict]) -> dict:
    if run_id in rows and run_id not in {s["run_id"] for s in later}:
        return rows[run_id]
    if not later:
        raise BrokenLineage(f"lineage: run {run_id} is not a run of this sweep")
    child = later[0]
    problem = "not a run of this sweep" if run_id not in rows else "already on this chain (a cycle)"
    raise BrokenLineage(f"lineage: run {child['run_id']} (trial {child['trial_id']}, generation "
                        f"{child['generation']}) was cloned from run {run_id}, {problem}")


def _segment(row: dict, keys: list[str], to_period: int) -> dict:
    from_period = 1 if pd.isna(row["cloned_at"]) else int(row["cloned_at"]) + 1
    values = {k: _plain(row[k]) for k in keys if k in row and not _missing(row[k])}
    return {"trial_id": row["trial_id"], "run_id": row["run_id"], "generation": int(row["generation"]),
            "from_period": from_period, "to_period": to_period, "values": values}


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _plain(value):
    """numpy's scalars as Python's, so the chain is JSON as it is."""
    return value.item() if isinstance(value, np.generic) else value


# -- the figure ------------------------------------------------------------------------------------

def lineage_figure(table: pd.DataFrame, chain: list[dict], histories: dict[str, History]) -> Figure:
    """The population over time and the winner's schedule.

    Top panel: every run's metric against eval period, one colour per member (its runs share it);
    each clone's first point joined to its donor's point at cloned_at by a dashed exploit edge; the
    winner's chain (the periods each segment contributed) drawn over them as a thick black line with,
    inside it, each stretch in its member's colour and labelled with the member, and a dotted
    vertical line at each exploit on it. The y axis is logarithmic where the values span more
    than 3x (as the curves figure's).
    Bottom: the schedule of the winner's path as stairs (period p trains between p-1 and p on the x
    axis): the learning rates (keys with an `lr` word) together on one log axis, and every other key
    whose value changes along the path on its own thin strip with its own linear axis, each value
    written at its start: real values, not normalised ones, are what a user retrains with. Keys
    that never change, or whose values are text, are listed in the schedule's title."""
    metric = table.attrs.get("metric", "metric")
    schedule = _schedule(chain)
    rates = [k for k in schedule if _is_rate(k)]
    strips = [k for k in schedule if not _is_rate(k) and _changes(schedule[k]) and _numeric(schedule[k])]
    wide_legend = table["trial_id"].nunique() > LEGEND_ROWS
    fig = Figure(figsize=(13.5 if wide_legend else 12, 4.8 + (1.9 if rates else 0) + 0.85 * len(strips)), dpi=100)
    heights = [4.8] + [1.9] * bool(rates) + [0.85] * len(strips)
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    axes = np.atleast_1d(axes)
    _population(axes[0], table, chain, histories, metric)
    if rates:
        _rate_panel(axes[1], schedule, rates, chain)
    for ax, key in zip(axes[1 + bool(rates):], strips):
        _strip(ax, schedule[key], key, chain)
    _schedule_title(axes[1] if len(axes) > 1 else axes[0], schedule, rates, strips, chain)
    for ax in axes[1:]:
        _exploit_lines(ax, chain)
    axes[-1].set_xlabel("eval period")
    axes[-1].xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axes[-1].set_xlim(0, max([int(p) for h in histories.values() for p, _ in h] + [1]) + 0.5)
    fig.subplots_adjust(left=0.1, right=0.72 if wide_legend else 0.80, top=0.93, bottom=0.06 if len(axes) > 2 else 0.09, hspace=0.35)
    return fig


def _population(ax, table: pd.DataFrame, chain: list[dict], histories: dict[str, History], metric: str) -> None:
    colours = _member_colours(sorted(table["trial_id"].unique()))
    shown = []
    for row in table.to_dict("records"):
        points = _finite(histories.get(row["run_id"], []))
        colour = colours[row["trial_id"]]
        if points:
            shown.append(np.array([v for _, v in points]))
            ax.plot(*zip(*points), color=colour, lw=1.1, alpha=0.8, zorder=2,
                    marker="o" if len(points) == 1 else None, ms=3)
        edge = _exploit_edge(row, histories)
        if edge:
            ax.plot(*zip(*edge), color=colour, lw=1, ls="--", alpha=0.8, zorder=2)
    _winner_path(ax, chain, histories, colours)
    _exploit_lines(ax, chain)
    figures._log_scale_if_wide(ax, shown)
    ax.margins(y=0.08)  # room for the path's labels under its lowest points
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    winner = chain[-1] if chain else None
    runs, exploits = len(table), int(table["cloned_from_run"].notna().sum())
    ax.set_title(f"PBT lineage: {metric} of {len(colours)} members over {runs} runs, {exploits} exploits"
                 + (f"; thick: the path of the winner (trial {winner['trial_id']} at period "
                    f"{winner['to_period']}, {_count(len(chain), 'segment')})" if winner else ""),
                 fontsize=11, loc="left")
    _legend(ax, colours, winner)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _winner_path(ax, chain: list[dict], histories: dict[str, History], colours: dict) -> None:
    """A thick black line over the population with, inside it, each stretch in its member's colour
    (joined to the stretch before: the exploit), labelled with the member at its first point."""
    previous = []
    for segment in chain:
        points = [(p, v) for p, v in _finite(histories.get(segment["run_id"], []))
                  if segment["from_period"] <= p <= segment["to_period"]]
        if not points:
            continue
        line = previous[-1:] + points
        colour = colours.get(segment["trial_id"], "white")
        ax.plot(*zip(*line), color="black", lw=5, zorder=4, solid_capstyle="round")
        ax.plot(*zip(*line), color=colour, lw=1.8, zorder=5, solid_capstyle="round")
        ax.annotate(segment["trial_id"], points[0], xytext=(4, -14), textcoords="offset points", fontsize=8,
                    zorder=6, bbox={"boxstyle": "round,pad=0.2", "fc": colour, "alpha": 0.7, "ec": "none"})
        previous = points


def _member_colours(members: list[str]) -> dict[str, tuple]:
    """Distinct colours for up to 40 members (tab20 then tab20b), tab10's for up to 10."""
    palette = (list(colormaps["tab10"].colors) if len(members) <= 10
               else list(colormaps["tab20"].colors) + list(colormaps["tab20b"].colors))
    return {m: palette[i % len(palette)] for i, m in enumerate(members)}


def _finite(history: History) -> History:
    return [(p, v) for p, v in history if math.isfinite(v)]


def _exploit_edge(row: dict, histories: dict[str, History]) -> list | None:
    """(donor's point at cloned_at, clone's first point): None for a generation-0 run, or where
    either end has no finite value."""
    if pd.isna(row["cloned_from_run"]):
        return None
    donor = dict(_finite(histories.get(row["cloned_from_run"], [])))
    own = _finite(histories.get(row["run_id"], []))
    at = int(row["cloned_at"])
    return [(at, donor[at]), own[0]] if at in donor and own else None


def _path_points(chain: list[dict], histories: dict[str, History]) -> History:
    return [(p, v) for s in chain for p, v in _finite(histories.get(s["run_id"], []))
            if s["from_period"] <= p <= s["to_period"]]


def _exploit_lines(ax, chain: list[dict]) -> None:
    for segment in chain[:-1]:
        ax.axvline(segment["to_period"], color="0.4", lw=0.8, ls=":", zorder=1)


def _legend(ax, colours: dict, winner: dict | None) -> None:
    handles = [Line2D([], [], color="black", lw=5, label="winner's path (inside: whose stretch)")] * bool(winner)
    handles += [Line2D([], [], color="0.3", lw=1, ls="--", label="exploit: donor -> clone"),
                Line2D([], [], color="0.4", lw=0.8, ls=":", label="an exploit on the path")]
    handles += [Line2D([], [], color=c, lw=2, label=m) for m, c in colours.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
              ncol=1 if len(colours) <= LEGEND_ROWS else 2, title="member (trial id)", title_fontsize=8, frameon=False)


def _schedule(chain: list[dict]) -> dict[str, list]:
    """key -> its value in each segment (None where a segment lacks it)."""
    keys = list(dict.fromkeys(k for s in chain for k in s["values"]))
    return {k: [s["values"].get(k) for s in chain] for k in keys}


def _is_rate(key: str) -> bool:
    return "lr" in key.lower().split("_")


def _changes(values: list) -> bool:
    return len({str(v) for v in values}) > 1


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _edges(chain: list[dict]) -> list[float]:
    return [chain[0]["from_period"] - 1] + [s["to_period"] for s in chain]


def _rate_panel(ax, schedule: dict, rates: list[str], chain: list[dict]) -> None:
    for i, key in enumerate(rates):
        values = [np.nan if v is None else float(v) for v in schedule[key]]
        ax.stairs(values, _edges(chain), baseline=None, lw=2, color=colormaps["Dark2"].colors[i % 8], label=key)
        _write_values(ax, values, chain)
    ax.set_yscale("log")
    ax.margins(y=0.25)  # room for the values written above the top line
    rates_seen = [float(v) for k in rates for v in schedule[k] if v is not None]
    if rates_seen and max(rates_seen) < 10 * min(rates_seen):  # within a decade: no power of 10 to label
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: figures.fmt(v)))
        ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_ylabel("learning rate")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _strip(ax, values: list, key: str, chain: list[dict]) -> None:
    values = [np.nan if v is None else float(v) for v in values]
    ax.stairs(values, _edges(chain), baseline=None, lw=2, color="0.25")
    _write_values(ax, values, chain)
    low, high = np.nanmin(values), np.nanmax(values)
    pad = (high - low) * 0.5 or abs(high) * 0.1 or 1
    ax.set_ylim(low - pad, high + pad)
    ax.set_ylabel(key, rotation=0, ha="right", va="center", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.25)


def _write_values(ax, values: list[float], chain: list[dict]) -> None:
    """Each value where it starts (a segment that keeps its donor's value gets no second label)."""
    for i, (value, segment) in enumerate(zip(values, chain)):
        if math.isfinite(value) and (i == 0 or value != values[i - 1]):
            ax.annotate(figures.fmt(value), (segment["from_period"] - 1, value), xytext=(2, 3),
                        textcoords="offset points", fontsize=7)


def _schedule_title(ax, schedule: dict, rates: list[str], strips: list[str], chain: list[dict]) -> None:
    if not chain:
        return
    steady = [f"{k}={figures.fmt(v[0])}" for k, v in schedule.items()
              if k not in rates and k not in strips and not _changes(v)]
    text = [f"{k}: {' -> '.join(map(str, v))}" for k, v in schedule.items()
            if k not in rates and k not in strips and _changes(v)]
    line = "; ".join(filter(None, [", ".join(text), "unchanged: " + ", ".join(steady) if steady else ""]))
    path = " -> ".join(f"{s['trial_id']}[{s['from_period']}..{s['to_period']}]" for s in chain)
    ax.set_title(f"the winner's schedule along its path {path}" + (f"\n{line}" if line else ""),
                 fontsize=9, loc="left")


# -- the parent run's record -----------------------------------------------------------------------

def log_lineage(tracking: Tracking, keys: list[str], metric: str, winner_run_id: str | None,
                winner_period: int | None, mode: str = "min") -> list[dict]:
    """The driver, as a PBT sweep ends: `lineage.parquet` (the table, with `on_winner_path`) and
    `lineage.png` on the parent run; returns the winner's chain. Best effort, as log_summary's
    files: a part that fails is one warning and is left out (a broken chain: [] and the table
    without `on_winner_path`'s Trues), never a failed sweep."""
    chain, files = [], {}
    try:
        runs = _sweep_runs(tracking)
        histories = _histories(tracking, runs, metric)
        table = _table(runs, histories, keys, metric, mode)
    except Exception as e:  # noqa: BLE001  the sweep's results matter more than their lineage
        _left_out("lineage", e)
        return []
    parts = {
        # No winner (every member failed): the table and the figure without a path.
        "lineage chain": lambda: chain.extend(chain_to(table, winner_run_id, winner_period) if winner_run_id else []),
        TABLE_FILE: lambda: files.update({TABLE_FILE: _parquet(_with_path(table, chain))}),
        FIGURE_FILE: lambda: files.update({FIGURE_FILE: figures.png(lineage_figure(table, chain, histories))}),
    }
    for what, part in parts.items():
        try:
            part()
        except Exception as e:  # noqa: BLE001
            _left_out(what, e)
    _log_files(tracking, files)
    return chain


def _with_path(table: pd.DataFrame, chain: list[dict]) -> pd.DataFrame:
    on_path = {s["run_id"] for s in chain}
    return table.assign(**{ON_WINNER_PATH: table["run_id"].isin(on_path)})


def _parquet(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _log_files(tracking: Tracking, files: dict[str, bytes]) -> None:
    if not files:
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                (Path(tmp) / name).write_bytes(content)
            tracking.client().log_artifacts(tracking.parent_run_id, tmp)
    except Exception as e:  # noqa: BLE001
        _left_out(", ".join(files), e)


def _left_out(what: str, e: Exception) -> None:
    log.warning("parent run: %s left out (%s: %s)", what, type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "")


# -- retraining without PBT ------------------------------------------------------------------------

def schedule_json(chain: list[dict], base_config: dict, steps_per_eval: int) -> dict:
    """What retraining the winner without PBT needs: the config it started from, `steps_per_eval`
    (period p is generator steps (p-1)*steps_per_eval+1 .. p*steps_per_eval) and the chain's
    segments, each period trained with `base_config` overridden by its segment's `values`.
    JSON-serialisable as it is (numpy scalars become Python's)."""
    segments = [{k: s[k] for k in ("from_period", "to_period", "trial_id", "run_id", "generation")}
                | {"values": {k: _plain(v) for k, v in s["values"].items()}} for s in chain]
    return {"base_config": _json_ready(base_config), "steps_per_eval": int(steps_per_eval), "segments": segments}


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return _plain(value)


__all__ = ["GENERATION_TAG", "CLONED_FROM_RUN_TAG", "CLONED_FROM_TRIAL_TAG", "CLONED_AT_TAG", "BrokenLineage",
           "lineage_table", "chain_to", "lineage_figure", "log_lineage", "schedule_json"]
