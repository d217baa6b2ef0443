"""`sweeper report NAME`: one self-contained HTML page per sweep, read back from its MLflow record.

What it shows: the searched params against each trial's best value of the sweep's metric
(parallel coordinates), which params mattered (importance), every trial's metric against kimg
coloured by how it ended, the best value so far against the compute the sweep had spent, and the
sample grids of the best trials side by side.

Decisions:
- Built only from MlflowClient reads (as `status` and `export` are: sweeper.tracking.report), so it
  works for a finished sweep, a running one, the local sqlite store and a server. The metric and
  its direction are the parent run's `metric` param ("fid (min)", "val_acc (max)"): nothing here
  knows FID.
- plotly, with plotly.js inlined once in the page's head (no CDN) and the grids as data: URIs, so
  the file opens offline, as an MLflow artifact, and mailed. Each figure's data lives in its div
  (`.js-plotly-plot`'s `data`), one trace per trial in the curves.
- Importance: the parent's `param_importance.csv` where the driver logged it (the searcher's own
  Optuna study, whose distributions are the space's); otherwise (a running or interrupted sweep)
  the same evaluator (figures.param_importance) on a study rebuilt from the record, whose
  distributions are the ranges the trials covered (log-scaled where a positive param spans two
  decades or more: the record does not say how the space sampled it).
- The compute axis orders every trial's eval periods by the time MLflow received them and adds up
  each trial's latest `compute_s` (device-seconds, sweeper.trial.ledger): a period delivered late
  (after an outage) counts when it arrived.
- Grids: the measured checkpoint's grid for a trial the final evaluation measured, else the grid of
  its best period (summary.trial_grid, as the parent's top_grids.png), for the `top` best trials:
  the winner, then measured trials by the reported final metric, then the rest by their best value.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from mlflow.tracking import MlflowClient
from plotly.colors import sample_colorscale
from plotly.offline import get_plotlyjs

from sweeper.tracking import figures
from sweeper.tracking.lineage import FIGURE_FILE as LINEAGE_FIGURE
from sweeper.tracking.lineage import TABLE_FILE as LINEAGE_TABLE
from sweeper.tracking.outcomes import COMPLETED, DIVERGED, ERROR, INTERRUPTED, OOM, STOPPED
from sweeper.tracking.report import (
    BEST_TRIAL_TAG,
    SweepRecord,
    connect,
    final_metrics,
    history,
    latest_sweep,
    timed_history,
    trial_state,
    typed,
    typed_param_columns,
)
from sweeper.tracking.runs import STEP_METRIC, TRIAL_TAG
from sweeper.tracking.summary import artifact_bytes, trial_grid
from trainables.errors import BadInput

log = logging.getLogger("sweeper")

REPORT_FILE = "report.html"
TOP_GRIDS = 10
RUNGS_TAG = "sweeper.rungs"  # sweeper.tracking.rungs: "2: 231.4 (cutoff 240.1) promoted; 6: 118.2 stopped"
COMPUTE_METRIC = "compute_s"
LOG_SPAN = 100  # a positive numeric param whose max/min reaches this is shown (and rated) on a log scale
ENDING_COLOURS = {COMPLETED: "#1f77b4", "running": "#2ca02c", DIVERGED: "#d62728", ERROR: "#7f0000",
                  OOM: "#9467bd", INTERRUPTED: "#8c564b"}


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial as the report shows it."""
    trial_id: str
    run_id: str
    outcome: str          # the driver's outcome tag, or a derived state while the sweep runs
    ending: str           # how it ended, for the legend: "completed", "stopped at rung 2", "diverged at period 3"
    stopped_at: int       # the eval period it stopped at (0: none); orders the "stopped" shades
    params: dict          # searched param -> typed value (None: absent, a conditional param)
    points: pd.DataFrame  # one row per eval period: step, x, value, compute_s, timestamp (ms)
    best: float           # its best finite value of the sweep's metric (NaN: none)
    final: float          # the reported final metric (NaN: not measured)
    final_period: float   # the eval period of the measured checkpoint (NaN: not measured)


# -- the commands ------------------------------------------------------------------------------

def write_report(name: str, output: str, *, top: int = TOP_GRIDS, uri: str | None = None) -> str:
    """Writes NAME's latest sweep's report to `output` (whole or not at all); returns what it wrote."""
    path = Path(output)
    if path.suffix.lower() not in (".html", ".htm"):
        raise BadInput(f"report: -o {output}: not an .html file")
    if top < 0:
        raise BadInput(f"report: --top {top}: must be 0 or more")
    client, exists = connect(uri)
    if not exists:
        raise BadInput(f"no sweep named {name!r}: no MLflow store at {client.tracking_uri}")
    sweep = latest_sweep(client, name)
    page = build_report(client, sweep, top=top)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)  # a reader never sees half a page
    return f"wrote the report of sweep {name} ({len(sweep.trials)} trials, {len(page) / 1e6:.1f} MB) to {output}"


def log_report(client: MlflowClient, sweep: SweepRecord) -> None:
    """The driver, as a sweep ends: `report.html` on the parent run. Best effort: a report that
    cannot be built is one warning, never a failed sweep."""
    try:
        client.log_text(sweep.parent.info.run_id, build_report(client, sweep), REPORT_FILE)
    except Exception as e:  # noqa: BLE001  the sweep's results matter more than this page of them
        log.warning("parent run: %s left out (%s: %s)", REPORT_FILE, type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "")


def build_report(client: MlflowClient, sweep: SweepRecord, *, top: int = TOP_GRIDS) -> str:
    """The whole page, as text."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not a bar per grid
    trials = read_trials(client, sweep)
    final = (final_metrics(sweep) or [None])[0]
    winner = sweep.parent.data.tags.get(BEST_TRIAL_TAG)
    ranked = rank(trials, sweep.mode, winner)
    sections = [
        ("Searched parameters against the best " + sweep.metric, parallel_coordinates(trials, sweep)),
        ("Which parameters mattered", importance_figure(importance_table(client, sweep, trials), sweep)),
        (f"{sweep.metric} of every trial, by how it ended", curves_figure(trials, sweep, winner)),
        (f"Best {sweep.metric} so far against the compute spent", best_so_far_figure(trials, sweep)),
    ]
    parts = [_figure_html(title, fig) for title, fig in sections]
    parts.append(_grids_html(client, ranked[:top], sweep, final))
    parts.append(_lineage_html(client, sweep))
    parts.append(_table_html(ranked, sweep, final))
    return _page(sweep, trials, winner, final, parts)


# -- reading the record ------------------------------------------------------------------------

def read_trials(client: MlflowClient, sweep: SweepRecord) -> list[Trial]:
    types = typed_param_columns(sweep)
    final = (final_metrics(sweep) or [None])[0]
    planned = _int(sweep.parent.data.params.get("num_evals"))
    trials = []
    for run in sorted(sweep.trials, key=lambda r: r.data.tags[TRIAL_TAG]):
        points = _points(client, run.info.run_id, sweep.metric)
        outcome = _outcome(run, planned)
        values = points["value"].to_numpy(float)
        finite = values[np.isfinite(values)]
        best = float((finite.min() if sweep.mode == "min" else finite.max()) if finite.size else math.nan)
        ending, stopped_at = _ending(run, outcome, points)
        metrics = run.data.metrics
        trials.append(Trial(
            trial_id=run.data.tags[TRIAL_TAG], run_id=run.info.run_id, outcome=outcome, ending=ending,
            stopped_at=stopped_at,
            params={k: typed(run.data.params.get(k), types.get(k, str)) for k in sweep.searched},
            points=points, best=best, final=float(metrics.get(final, math.nan)) if final else math.nan,
            final_period=float(metrics.get("final_eval_period", math.nan))))
    return trials


def _points(client: MlflowClient, run_id: str, metric: str) -> pd.DataFrame:
    """One row per eval period with a value of `metric`: its step, kimg (else the step), value,
    the trial's compute so far and when MLflow received it."""
    values = timed_history(client, run_id, metric)
    kimg = history(client, run_id, "kimg")
    compute = history(client, run_id, COMPUTE_METRIC)
    rows = [{"step": step, "x": kimg.get(step, math.nan), "value": value,
             COMPUTE_METRIC: compute.get(step, math.nan), "timestamp": stamp}
            for step, (value, stamp) in sorted(values.items())]
    frame = pd.DataFrame(rows, columns=["step", "x", "value", COMPUTE_METRIC, "timestamp"])
    return frame


def _outcome(run, planned: int | None) -> str:
    """The driver's outcome tag; before the sweep ends (no tag yet) what MLflow's status says: a
    trial still training is running, one that ended without all its periods stopped early."""
    state = trial_state(run)
    if state == "RUNNING":
        return "running"
    if state == "FINISHED":
        steps = int(run.data.metrics.get(STEP_METRIC, 0))
        return COMPLETED if planned is None or steps >= planned else STOPPED
    return {"FAILED": ERROR, "KILLED": INTERRUPTED}.get(state, state)


def _ending(run, outcome: str, points: pd.DataFrame) -> tuple[str, int]:
    """(legend label, the period it stopped at or 0)."""
    last = int(points["step"].max()) if len(points) else int(run.data.metrics.get(STEP_METRIC, 0))
    if outcome == STOPPED:
        rung = _stopped_rung(run.data.tags.get(RUNGS_TAG, ""))
        return (f"stopped at rung {rung}", rung) if rung else (f"stopped at period {last}", last)
    if outcome == DIVERGED:
        at = run.data.metrics.get("diverged_at_period")
        return f"diverged at period {int(at) if at is not None else last}", 0
    return {ERROR: "failed", OOM: "out of GPU memory"}.get(outcome, outcome), 0


def _stopped_rung(rungs: str) -> int | None:
    """The rung (in eval periods) a promotion scheduler stopped the trial at, from its tag."""
    for part in rungs.split(";"):
        rung, _, rest = part.strip().partition(":")
        if rest.strip().endswith("stopped") and rung.strip().isdigit():
            return int(rung)
    return None


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


def rank(trials: list[Trial], mode: str, winner: str | None) -> list[Trial]:
    """The winner, then the measured trials by their final metric, then the rest by their best value."""
    sign = 1 if mode == "min" else -1

    def key(t: Trial):
        measured = math.isfinite(t.final)
        value = t.final if measured else t.best
        return (t.trial_id != winner, not measured, not math.isfinite(value),
                sign * value if math.isfinite(value) else 0.0, t.trial_id)
    return sorted(trials, key=key)


# -- parallel coordinates ----------------------------------------------------------------------

def parallel_coordinates(trials: list[Trial], sweep: SweepRecord) -> go.Figure:
    """One line per trial with a finite best value: a dimension per searched param, then the best."""
    shown = [t for t in trials if math.isfinite(t.best)]
    dimensions = [_dimension(p, [t.params.get(p) for t in shown]) for p in sweep.searched]
    best = [t.best for t in shown]
    dimensions.append(_dimension(f"best {sweep.metric}", best))
    line = {"color": best, "colorscale": "Viridis", "reversescale": sweep.mode == "min", "showscale": True,
            "colorbar": {"title": {"text": f"best {sweep.metric}"}}} if shown else {}
    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=line, ids=[t.trial_id for t in shown],
                                 labelangle=-30, labelside="top"))
    fig.update_layout(height=520, margin={"l": 70, "r": 40, "t": 140, "b": 30},
                      title={"text": f"{len(shown)} trials with a {sweep.metric}, coloured by it (yellow: the best); "
                                     f"drag along an axis to filter" if shown else f"no trial has a {sweep.metric} yet",
                             "font": {"size": 13}})
    return fig


def _dimension(label: str, values: list) -> dict:
    """A parcoords axis: numbers as they are (log10 where they span LOG_SPAN), anything else as
    categories; a value that is absent (a conditional param) gets its own tick below the rest."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    numeric = present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if not numeric:
        choices = sorted({str(v) for v in present}) + (["absent"] if len(present) < len(values) else [])
        codes = [choices.index(str(v) if v in present else "absent") for v in values]
        return {"label": label, "values": codes, "tickvals": list(range(len(choices))),
                "ticktext": [c or '""' for c in choices]}  # an empty string (no augmentation) is a value too
    log_scale = min(present) > 0 and max(present) / min(present) >= LOG_SPAN
    shown = [math.log10(v) if log_scale else float(v) for v in present]
    low, high = min(shown), max(shown)
    absent = low - max(high - low, 1.0) * 0.1
    coords = [absent if v not in present else (math.log10(v) if log_scale else float(v)) for v in values]
    integers = not log_scale and all(isinstance(v, int) for v in present) and high - low <= 10
    ticks = (list(range(int(low), int(high) + 1)) if integers else list(np.linspace(low, high, 5)) if high > low
             else [low])
    tickvals = ([absent] if len(present) < len(values) else []) + ticks
    ticktext = (["absent"] if len(present) < len(values) else []) + [
        figures.fmt(float(10 ** t if log_scale else t)) for t in ticks]
    return {"label": f"{label} (log)" if log_scale else label, "values": coords, "tickvals": tickvals,
            "ticktext": ticktext}


# -- importance --------------------------------------------------------------------------------

def importance_table(client: MlflowClient, sweep: SweepRecord, trials: list[Trial]) -> pd.DataFrame:
    """The parent's param_importance.csv where the driver logged it, else computed from the record."""
    parent = sweep.parent.info.run_id
    if "param_importance.csv" in {a.path for a in client.list_artifacts(parent)}:
        with tempfile.TemporaryDirectory() as tmp:
            frame = pd.read_csv(client.download_artifacts(parent, "param_importance.csv", tmp))
        frame.attrs["source"] = "the searcher's study, as the driver logged it"
        return frame
    frame = figures.param_importance(rebuilt_study(trials, sweep), list(sweep.searched))
    frame.attrs["source"] = "a study rebuilt from the MLflow record (the sweep has not logged its own yet)"
    return frame


def rebuilt_study(trials: list[Trial], sweep: SweepRecord) -> optuna.Study:
    """An Optuna study of the trials as the searcher was told them: each trial's best value (its
    objective, `<metric>_best`); a diverged or out-of-memory one the worst value (infinite, which
    figures.param_importance makes the worst finite one); a failed or unmeasured one left out."""
    distributions = _distributions(trials, sweep.searched)
    study = optuna.create_study(direction="minimize" if sweep.mode == "min" else "maximize")
    worst = math.inf if sweep.mode == "min" else -math.inf
    for t in trials:
        broken = t.outcome in (DIVERGED, OOM)
        if not broken and not math.isfinite(t.best):
            continue
        params = {p: v for p, v in t.params.items() if p in distributions and v is not None}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={p: distributions[p] for p in params}, value=worst if broken else t.best))
    return study


def _distributions(trials: list[Trial], searched: list[str]) -> dict:
    """param -> the Optuna distribution of the values the trials took (see the module's docstring)."""
    out = {}
    for p in searched:
        values = [t.params.get(p) for t in trials if t.params.get(p) is not None]
        if not values:
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            low, high = min(values), max(values)
            log_scale = low > 0 and high / low >= LOG_SPAN
            if all(isinstance(v, int) for v in values):
                out[p] = optuna.distributions.IntDistribution(low, high, log=log_scale)
            else:
                out[p] = optuna.distributions.FloatDistribution(float(low), float(high), log=log_scale)
        else:
            out[p] = optuna.distributions.CategoricalDistribution(sorted(set(values), key=str))
    return out


def importance_figure(frame: pd.DataFrame, sweep: SweepRecord) -> go.Figure:
    fig = go.Figure()
    source = frame.attrs.get("source", "")
    if frame.empty:
        fig.add_annotation(text=frame.attrs.get("reason", "no searched parameters"), showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    else:
        shown = frame.iloc[::-1]  # bars are drawn bottom up: the most important on top
        reasons = shown["reason"].fillna("") if "reason" in shown else [""] * len(shown)
        fig.add_bar(x=shown["importance"].fillna(0).tolist(), y=shown["param"].tolist(), orientation="h",
                    text=[f"{'n/a' if pd.isna(v) else f'{v:.2f}'} {r}".strip() for v, r in zip(shown["importance"], reasons)],
                    textposition="auto", marker_color="#1f77b4")
        fig.update_xaxes(range=[0, 1.05], title=f"importance ({frame['evaluator'].iloc[0]}, "
                                               f"{frame['trials'].iloc[0]} trials; sums to 1)")
    fig.update_layout(height=140 + 32 * max(len(frame), 2), margin={"l": 140, "r": 30, "t": 50, "b": 50},
                      title={"text": f"how much each searched parameter separates the best trials ({source})",
                             "font": {"size": 13}})
    return fig


# -- curves ------------------------------------------------------------------------------------

def curves_figure(trials: list[Trial], sweep: SweepRecord, winner: str | None) -> go.Figure:
    """Exactly one trace per trial (one with no value yet is an empty trace, listed in the legend),
    grouped in the legend by how it ended; the winner thick and black, drawn last."""
    colours = _ending_colours(trials)
    by_kimg = all(p["x"].notna().all() for p in (t.points for t in trials))
    fig = go.Figure()
    order = sorted(trials, key=lambda t: (t.trial_id == winner, _ending_order(t), t.trial_id))
    for t in order:
        x = t.points["x"] if by_kimg else t.points["step"]
        is_winner = t.trial_id == winner
        fig.add_scatter(
            x=x.tolist(), y=t.points["value"].tolist(), name=t.trial_id, mode="lines+markers" if len(x) < 2 or is_winner else "lines",
            legendgroup="winner" if is_winner else t.ending,
            legendgrouptitle_text="winner" if is_winner else t.ending,
            line={"color": "black" if is_winner else colours[t.ending], "width": 4 if is_winner else 1.5,
                  "dash": "solid" if t.outcome in (COMPLETED, "running") or is_winner else "dot"},
            customdata=[[int(s)] for s in t.points["step"]],
            hovertemplate=f"{html.escape(t.trial_id)} ({html.escape(t.ending)})<br>"
                          f"period %{{customdata[0]}}, {'kimg' if by_kimg else 'eval period'} %{{x}}<br>"
                          f"{sweep.metric} %{{y:.4g}}<extra></extra>")
    fig.update_layout(height=560, legend={"groupclick": "toggleitem", "font": {"size": 10}},
                      xaxis_title="kimg (thousands of real images shown)" if by_kimg else "eval period",
                      yaxis_title=sweep.metric, margin={"t": 50},
                      title={"text": f"{len(trials)} trials ({'lower' if sweep.mode == 'min' else 'higher'} is "
                                     f"better); click a legend entry to hide it", "font": {"size": 13}})
    if _wide([t.points["value"] for t in trials]):
        fig.update_yaxes(type="log")
    return fig


def _ending_order(t: Trial) -> tuple:
    return ({COMPLETED: 0, "running": 1, STOPPED: 2}.get(t.outcome, 3), -t.stopped_at, t.ending)


def _ending_colours(trials: list[Trial]) -> dict[str, str]:
    """A colour per ending; the stopped ones in shades, darker the later they stopped."""
    stopped = sorted({(t.stopped_at, t.ending) for t in trials if t.outcome == STOPPED})
    shades = sample_colorscale("YlOrBr", list(np.linspace(0.35, 0.85, len(stopped)))) if stopped else []
    colours = {ending: shade for (_, ending), shade in zip(stopped, shades)}
    for t in trials:
        colours.setdefault(t.ending, ENDING_COLOURS.get(t.outcome, "#7f7f7f"))
    return colours


def _wide(series: list[pd.Series]) -> bool:
    """Values spanning more than 3x (FID 50..400): on a linear axis the good trials are one flat band."""
    values = np.concatenate([s.to_numpy(float) for s in series]) if series else np.array([])
    values = values[np.isfinite(values)]
    return bool(values.size) and values.min() > 0 and values.max() / values.min() > 3


# -- best so far against compute ---------------------------------------------------------------

def best_so_far(trials: list[Trial], mode: str) -> pd.DataFrame:
    """One row per eval period of the sweep, in the order MLflow received them: the sweep's compute
    so far (the sum of each trial's latest compute_s), the best value so far and whose it is."""
    events = sorted(((row.timestamp, t.trial_id, row.compute_s, row.value) for t in trials
                     for row in t.points.itertuples()), key=lambda e: (e[0], e[1]))
    spent, best, whose, rows = {}, math.nan, None, []
    for stamp, trial_id, compute, value in events:
        if math.isfinite(compute):
            spent[trial_id] = compute
        if math.isfinite(value) and (math.isnan(best) or (value < best if mode == "min" else value > best)):
            best, whose = value, trial_id
        rows.append({"compute_s": sum(spent.values()), "best": best, "trial_id": whose, "timestamp": stamp})
    return pd.DataFrame(rows, columns=["compute_s", "best", "trial_id", "timestamp"])


def best_so_far_figure(trials: list[Trial], sweep: SweepRecord) -> go.Figure:
    frame = best_so_far(trials, sweep.mode)
    hours = len(frame) and frame["compute_s"].max() > 7200
    x = frame["compute_s"] / 3600 if hours else frame["compute_s"]
    fig = go.Figure(go.Scatter(
        x=x.tolist(), y=frame["best"].tolist(), mode="lines+markers", line={"shape": "hv", "color": "#1f77b4"}, marker={"size": 4},
        customdata=[[t or "-"] for t in frame["trial_id"]],
        hovertemplate=f"best {sweep.metric} %{{y:.4g}} (trial %{{customdata[0]}})<br>after %{{x:.4g}} "
                      f"device-{'hours' if hours else 'seconds'}<extra></extra>"))
    fig.update_layout(height=420, margin={"t": 50}, yaxis_title=f"best {sweep.metric} so far",
                      xaxis_title=f"compute spent by the sweep's trials (device-{'hours' if hours else 'seconds'}: "
                                  f"wall time x GPUs, or CPUs, held)",
                      title={"text": "each eval period of every trial, in the order they arrived",
                             "font": {"size": 13}})
    if _wide([frame["best"]]):
        fig.update_yaxes(type="log")
    return fig


# -- grids, table and page ---------------------------------------------------------------------

def _grids_html(client: MlflowClient, top: list[Trial], sweep: SweepRecord, final: str | None) -> str:
    cards = []
    for t in top:
        shown = trial_grid(client, pd.Series({"run_id": t.run_id, "final_eval_period": t.final_period}),
                           sweep.metric, sweep.mode)
        if shown is None:
            continue
        png, which = shown
        numbers = f"best {sweep.metric} {_cell(t.best)}" + (
            f", {final} {_cell(t.final)}" if final and math.isfinite(t.final) else "")
        params = ", ".join(f"{k}={_cell(v)}" for k, v in t.params.items() if v is not None)
        cards.append(f"<figure class='grid'><img alt='samples of trial {html.escape(t.trial_id)}' "
                     f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                     f"<figcaption><b>{html.escape(t.trial_id)}</b> ({html.escape(t.ending)})<br>"
                     f"{html.escape(numbers)}<br>{html.escape(params)}<br><i>{html.escape(which)}</i>"
                     f"</figcaption></figure>")
    body = "".join(cards) or "<p>no trial has a sample grid yet</p>"
    return (f"<section><h2>Samples of the best {len(cards)} trials</h2><p class='note'>The measured "
            f"checkpoint's grid for a trial the final evaluation measured, else the grid of its best period; "
            f"best first (`--top` for more).</p><div class='grids'>{body}</div></section>")


def _lineage_html(client: MlflowClient, sweep: SweepRecord) -> str:
    """A population's lineage figure (sweeper.tracking.lineage), where the sweep was one."""
    run_id = sweep.parent.info.run_id
    if LINEAGE_FIGURE not in {a.path for a in client.list_artifacts(run_id)}:
        return ""
    png = artifact_bytes(client, run_id, LINEAGE_FIGURE)
    return (f"<section><h2>Population lineage</h2><p class='note'>Each member's runs, one per generation; "
            f"a dashed line is an exploit (the member took the donor's checkpoint); the thick line is the "
            f"winner's path, and below it the schedule it trained with ({LINEAGE_TABLE} on the parent run "
            f"has the table).</p><img style='max-width:100%' alt='lineage' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'></section>")


def _table_html(ranked: list[Trial], sweep: SweepRecord, final: str | None) -> str:
    titles = ["trial", "ended", f"best {sweep.metric}", *([final] if final else []), "periods", *sweep.searched]
    rows = []
    for t in ranked:
        cells = [t.trial_id, t.ending, _cell(t.best), *([_cell(t.final)] if final else []),
                 str(int(t.points["step"].max())) if len(t.points) else "0",
                 *(_cell(t.params.get(p)) for p in sweep.searched)]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(t)}</th>" for t in titles)
    return f"<section><h2>Trials, best first</h2><table><tr>{head}</tr>{''.join(rows)}</table></section>"


def _cell(value) -> str:
    """A number as short as it can be without reading as another value (an EMA decay of 0.9999 is
    not "1"); "" for none (NaN, an absent param)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, float):
        return str(value)
    for digits in (3, 4, 5, 6):
        text = figures.fmt(value) if digits == 3 else f"{value:.{digits}g}"
        if float(text) == value or float(text) != round(value):
            return text
    return repr(value)


def _figure_html(title: str, fig: go.Figure) -> str:
    # plotly.js is in the page's head once; each figure carries only its data.
    div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})
    return f"<section><h2>{html.escape(title)}</h2>{div}</section>"


def _page(sweep: SweepRecord, trials: list[Trial], winner: str | None, final: str | None, parts: list[str]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(sweep.parent.info.start_time / 1000))
    counts = pd.Series([t.ending for t in trials]).value_counts().to_dict() if trials else {}
    result = ""
    if winner:
        value = sweep.parent.data.metrics.get(final) if final else None
        result = f"; winner: trial {winner}" + (f", {final} {figures.fmt(value)}" if value is not None else "")
    summary = (f"{sweep.state}, started {started}; {len(trials)} of {sweep.parent.data.params.get('num_samples', '?')} "
               f"trials ({', '.join(f'{n} {e}' for e, n in counts.items()) or 'none yet'}); "
               f"{sweep.metric} ({'lower' if sweep.mode == 'min' else 'higher'} is better){result}")
    style = ("body{font:14px sans-serif;margin:1.5em;color:#222}h1{font-size:20px}h2{font-size:16px;margin-top:2em}"
             ".note{color:#555;font-size:12px}.grids{display:flex;flex-wrap:wrap;gap:14px}"
             ".grid{margin:0;width:300px}.grid img{width:300px;image-rendering:pixelated;display:block}"
             ".grid figcaption{font-size:12px;margin-top:4px;word-break:break-word}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
             "th{background:#eee}tr:nth-child(even){background:#f7f7f7}")
    title = f"sweep {html.escape(sweep.name)} ({html.escape(sweep.kind)})"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script><style>{style}</style></head>"
            f"<body><h1>{title}</h1><p>{html.escape(summary)}</p>"
            f"<p class='note'>parent run {html.escape(sweep.parent.info.run_id)}; written "
            f"{time.strftime('%Y-%m-%d %H:%M')} from the MLflow record</p>{''.join(parts)}</body></html>")

