"""What a person looks at in the MLflow UI of a sweep's parent run: the trial table (CSV + HTML),
the metric curves of every trial, the sample grids of the best trials side by side, and which
searched parameters mattered. Every function returns bytes (or a Figure, for tests); logging is the caller's.
Figures are matplotlib `Figure`s, not pyplot ones: no backend to pick, no global figure list to leak into."""
from __future__ import annotations

import html
import io
import math
import textwrap
import warnings

import numpy as np
import optuna
import pandas as pd
from matplotlib import font_manager, ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageDraw, ImageFont

from sweeper.tracking.outcomes import COMPLETED, INTERRUPTED, STOPPED

IMPORTANCE_COLUMNS = {"param": str, "importance": float, "evaluator": str, "trials": int, "reason": str}


def fmt(value) -> str:
    """Short, for labels: 0.00021 -> 2.1e-4, 52.345 -> 52.3, 1000.0 -> 1000, True -> True."""
    if not isinstance(value, (float, np.floating)) or not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        return f"{value:.1e}".replace(".0e", "e").replace("e-0", "e-").replace("e+0", "e")
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def ranked(table: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Best first by `metric` (a column) or else `best_<metric>`; trials without a finite value last."""
    column = _sort_column(table, metric)
    if column is None:
        return table.reset_index(drop=True)
    value = pd.to_numeric(table[column], errors="coerce").replace([np.inf, -np.inf], np.nan)
    key = value if mode == "min" else -value
    return table.iloc[np.argsort(key.fillna(np.inf).to_numpy(), kind="stable")].reset_index(drop=True)


def _sort_column(table: pd.DataFrame, metric: str) -> str | None:
    return next((c for c in (metric, f"best_{metric}") if c in table), None)


def trial_table_files(table: pd.DataFrame, metric: str, mode: str) -> dict[str, bytes]:
    """trials.csv (full precision) and trials.html (one self-contained page), best trial first."""
    table = ranked(table, metric, mode)
    style = ("body{font:13px sans-serif}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;max-width:28em}"
             "th{background:#eee;position:sticky;top:0}tr:nth-child(even){background:#f7f7f7}")
    body = table.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)
    body = body.replace('<table class="dataframe">', '<table>')
    column = _sort_column(table, metric)
    title = (f"{len(table)} trials, by {html.escape(column)}, {'lowest' if mode == 'min' else 'highest'} first"
             if column else f"{len(table)} trials")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body><p>{title}</p>{body}</body></html>")
    return {"trials.csv": table.to_csv(index=False).encode(), "trials.html": page.encode()}


def curves_figure(curves: dict, outcomes: dict, winner: str | None, metric: str, mode: str):
    """`metric` against kimg, one Line2D per trial (gid = trial id): completed solid, stopped early
    dashed and faded, diverged/failed dotted red ending in an x, the winner thick black on top."""
    fig = Figure(figsize=(9, 5.5), dpi=110)
    ax = fig.subplots()
    values, skipped, winner_label = [], [], None
    for trial_id, frame in curves.items():
        points = _finite_points(frame, metric)
        if points is None:
            skipped.append(trial_id)
            continue
        x, y = points
        values.append(y)
        ax.plot(x, y, gid=trial_id, **_curve_style(outcomes.get(trial_id), trial_id == winner, len(x)))
        if trial_id == winner:
            winner_label = _winner_label(trial_id, y, metric, mode)
    _log_scale_if_wide(ax, values)
    _outcome_legend(ax, winner_label)
    ax.set(xlabel="kimg (thousands of real images shown)", ylabel=metric,
           title=f"{metric} of {len(values)} trials ({'lower' if mode == 'min' else 'higher'} is better)")
    ax.margins(x=0.02)
    ax.grid(True, which="major", alpha=0.3)
    if skipped:
        ax.text(0.01, 0.01, textwrap.shorten(f"not plotted (no finite {metric}): {', '.join(skipped)}", 150),
                transform=ax.transAxes, fontsize=8, color="0.3")
    fig.tight_layout()
    return fig


def _finite_points(frame: pd.DataFrame | None, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(kimg, metric) where both are finite, by kimg; None without such a point."""
    data = pd.DataFrame() if frame is None else frame
    if metric not in data or "kimg" not in data:
        return None
    x, y = (pd.to_numeric(data[c], errors="coerce").to_numpy(float) for c in ("kimg", metric))
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        return None
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


def _curve_style(outcome: str | None, is_winner: bool, points: int) -> dict:
    if is_winner:
        style = {"color": "black", "lw": 3, "zorder": 5, "marker": "o", "ms": 4}
    elif outcome == COMPLETED:
        style = {"lw": 1.3, "alpha": 0.9, "zorder": 3}
    elif outcome in (STOPPED, INTERRUPTED):
        style = {"color": "0.45", "lw": 1, "ls": "--", "alpha": 0.5, "zorder": 2}
    else:  # diverged, error, oom: what it measured before it failed
        style = {"color": "tab:red", "lw": 1, "ls": ":", "alpha": 0.7, "marker": "x", "markevery": [-1],
                 "zorder": 2}
    if points == 1:  # one eval (stopped at the first rung): a line of one point draws nothing
        style = {"marker": "o", "ms": 3, **style}
    return style


def _winner_label(trial_id: str, y: np.ndarray, metric: str, mode: str) -> str:
    best = y.min() if mode == "min" else y.max()
    return f"winner {trial_id} (best {metric} {fmt(float(best))})"


def _log_scale_if_wide(ax, values: list[np.ndarray]) -> None:
    if not values:
        return
    low, high = min(v.min() for v in values), max(v.max() for v in values)
    if low > 0 and high / low > 3:  # FID spans 50..400: on a linear axis the good trials are one flat band
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 1.5, 2, 3, 4, 5, 7), numticks=30))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _outcome_legend(ax, winner_label: str | None) -> None:
    handles = [Line2D([], [], lw=1.3, label="completed"),
               Line2D([], [], color="0.45", lw=1, ls="--", label="stopped early (ASHA) / interrupted"),
               Line2D([], [], color="tab:red", ls=":", marker="x", label="diverged / failed")]
    if winner_label:
        handles.insert(0, Line2D([], [], color="black", lw=3, label=winner_label))
    ax.legend(handles=handles, loc="upper right", fontsize=9)


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def fid_curves_png(curves: dict, outcomes: dict, winner: str | None, metric: str, mode: str) -> bytes:
    return png(curves_figure(curves, outcomes, winner, metric, mode))


def grid_label(row: pd.Series, metric: str, params: list[str], final_metric: str | None = None) -> list[str]:
    """Label lines of a trial's tile: id, best per-eval metric (and the final one), searched params."""
    value = f"best {metric} {fmt(_number(row.get(f'best_{metric}')))}"
    if final_metric and math.isfinite(_number(row.get(final_metric))):
        value += f"  {final_metric} {fmt(_number(row[final_metric]))}"
    # A conditional param missing from this trial is NaN in the table.
    shown = [f"{p}={fmt(v)}" for p in params
             if (v := row.get(f"config.{p}")) is not None and not (isinstance(v, float) and math.isnan(v))]
    return [str(row["trial_id"]), value, "  ".join(shown)]


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def top_grids_png(tiles: list[tuple[bytes, list[str]]], gap: int = 12) -> bytes | None:
    """The sample grids side by side, each under its label; a grid's pixels are left as they are
    (only grids of another size are scaled, nearest-neighbour, to the largest). None without tiles."""
    if not tiles:
        return None
    grids = [Image.open(io.BytesIO(data)).convert("RGB") for data, _ in tiles]
    width, height = max(g.width for g in grids), max(g.height for g in grids)
    grids = [g if g.size == (width, height) else g.resize((width, height), Image.NEAREST) for g in grids]
    size = max(15, width // 18)  # about 20 characters of width: readable at the grid's own resolution
    regular, bold = (ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(
        family="DejaVu Sans", weight=w)), size) for w in ("normal", "bold"))  # ships with matplotlib
    # (text, font) rows: the first line (the trial id) in bold, each line wrapped to the tile's width.
    labels = [[(w, bold if i == 0 else regular) for i, line in enumerate(lines)
               for w in _wrap(line, bold if i == 0 else regular, width)] for _, lines in tiles]
    band = int(max(len(rows) for rows in labels) * size * 1.25) + gap
    canvas = Image.new("RGB", (len(grids) * (width + gap) + gap, band + height + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (grid, rows) in enumerate(zip(grids, labels)):
        left = gap + i * (width + gap)
        for j, (text, font) in enumerate(rows):
            draw.text((left, gap // 2 + int(j * size * 1.25)), text, fill="black", font=font)
        canvas.paste(grid, (left, band))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _wrap(line: str, font, width: int) -> list[str]:
    """Greedy on the two-space gaps between "key=value" items, so an item is never split."""
    out = []
    for item in line.split("  "):
        if out and font.getlength(out[-1] + "  " + item) <= width:
            out[-1] += "  " + item
        else:
            out.append(item)
    return out or [""]


def param_importance(study: optuna.Study, params: list[str]) -> pd.DataFrame:
    """How much each searched parameter separates the best trials from the rest (normalised to sum 1).

    Optuna's PED-ANOVA: it ranks trials only by their place in the study (top 10% vs all), works
    with few trials, and Optuna 5 splits a conditional parameter's trials into the regimes where it
    exists, so define-by-run spaces count (fANOVA only uses the trials that have every parameter,
    i.e. drops the rest, and needs a forest fit per call).
    Trials counted: COMPLETE ones, and PRUNED ones (stopped by ASHA) at their last intermediate value;
    an early value is worse than a full run's, and ASHA stopped them for being worse than their
    rung peers, so they land below the top quantile, which is where they belong. Left out, most of
    an ASHA sweep (the poor configs) would be missing. A non-finite value (diverged) becomes the worst
    finite one: divergence is a result about the config. FAILED trials say nothing and are left out.
    A warm start outside the searched range is left out (Optuna's density has no place for it).
    Every searched param gets a row; one that could not be rated has NaN and a `reason`. With fewer
    than 3 rated trials the frame is empty and `df.attrs["reason"]` says why.
    """
    evaluator = optuna.importance.PedAnovaImportanceEvaluator
    kept = _rated_trials(study)
    if len(kept) < 3:
        return _too_few_rated(len(kept))
    rows, present = _importance_rows(kept, params, evaluator.__name__)
    copy = optuna.create_study(direction=study.direction)
    copy.add_trials(kept)
    try:
        for p, share in _importance_shares(copy, present, evaluator).items():
            rows[p][1] = share
    except (ValueError, RuntimeError) as e:  # an older Optuna refuses dynamic spaces
        for p in present:
            rows[p][1], rows[p][4] = math.nan, f"not evaluated: {str(e).splitlines()[0][:120]}"
    df = pd.DataFrame(list(rows.values()), columns=list(IMPORTANCE_COLUMNS))
    return df.sort_values("importance", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def _rated_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE and PRUNED trials as new trials with one finite value each (param_importance says why)."""
    rated = _trial_values(study)
    finite_values = [v for _, v in rated if math.isfinite(v)]
    worst = (max if study.direction == optuna.study.StudyDirection.MINIMIZE else min)(finite_values, default=0)
    kept = []
    for trial, value in rated if finite_values else []:
        try:
            kept.append(optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                                  value=value if math.isfinite(value) else worst))
        except ValueError:  # a warm start outside the searched range: no place on the param's density
            continue
    return kept


def _trial_values(study: optuna.Study) -> list[tuple[optuna.trial.FrozenTrial, float]]:
    rated = []
    for trial in study.get_trials(deepcopy=False):
        steps = trial.intermediate_values
        if trial.state == optuna.trial.TrialState.COMPLETE:
            rated.append((trial, trial.value))
        elif trial.state == optuna.trial.TrialState.PRUNED and steps:
            rated.append((trial, steps[max(steps)]))
    return rated


def _too_few_rated(count: int) -> pd.DataFrame:
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in IMPORTANCE_COLUMNS.items()})
    empty.attrs["reason"] = (f"{count} rated trial(s) (complete, or pruned at its last value); "
                             f"importance needs 3, with a finite value among them")
    return empty


def _importance_rows(kept: list, params: list[str], evaluator: str) -> tuple[dict[str, list], list[str]]:
    """A row per param (importance 0, or NaN where no trial has it; the reason it may be off) and
    the params that vary, the only ones the evaluator can rate."""
    rows, present = {}, []
    for p in params:
        seen = [t.params[p] for t in kept if p in t.params]
        varies = len(set(map(str, seen))) > 1
        present += [p] * varies
        reason = ("in no rated trial" if not seen else "one value in every trial" if not varies
                  else f"conditional: in {len(seen)} of {len(kept)} trials" if len(seen) < len(kept) else "")
        rows[p] = [p, math.nan if not seen else 0.0, evaluator, len(kept), reason]
    return rows, present


def _importance_shares(copy: optuna.Study, present: list[str], evaluator) -> dict[str, float]:
    """Each param's importance over their sum (0 where the sum is 0); {} without a param to rate."""
    # The top 10% (Optuna's default) but at least 2 trials, so the top density is not one point.
    quantile, raw = min(1.0, max(0.1, 2 / len(copy.get_trials(deepcopy=False)))), {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "few trials in a regime": the reason column says so
        if present:
            raw = optuna.importance.get_param_importances(
                copy, evaluator=evaluator(target_quantile=quantile), params=present, normalize=False)
    total = sum(raw.values())
    return {p: value / total if total > 0 else 0.0 for p, value in raw.items()}


def importance_files(df: pd.DataFrame) -> dict[str, bytes]:
    """param_importance.csv and a horizontal bar chart, most important on top (the reason if none)."""
    fig = Figure(figsize=(7, 1.2 + 0.45 * max(len(df), 2)), dpi=110)
    ax = fig.subplots()
    if df.empty:
        ax.axis("off")
        ax.text(0.5, 0.5, "\n".join(textwrap.wrap(df.attrs.get("reason", "no parameters"), 60)),
                ha="center", va="center", fontsize=11)
    else:
        shown = df.iloc[::-1]  # barh draws the first row at the bottom
        ax.barh(shown["param"], shown["importance"].fillna(0), color="tab:blue")
        for y, (value, reason) in enumerate(zip(shown["importance"], shown["reason"])):
            text = f" {'n/a' if pd.isna(value) else f'{value:.2f}'}  {reason}".rstrip() + " "
            inside = value > 0.55  # a long bar leaves no room on its right
            ax.text(value if inside else np.nan_to_num(value), y, text, va="center", fontsize=9,
                    ha="right" if inside else "left", color="white" if inside else "black")
        ax.set_xlim(0, 1.1)  # normalised: the bars compare across sweeps
        ax.set_xlabel(f"importance ({df['evaluator'].iloc[0]}, {df['trials'].iloc[0]} trials)")
    ax.set_title("which searched parameters mattered")
    fig.tight_layout()
    return {"param_importance.csv": df.to_csv(index=False).encode(), "param_importance.png": png(fig)}


def importance_metrics(df: pd.DataFrame) -> dict[str, float]:
    """{"importance.<param>": value} for the parent run's metrics; params without a value left out."""
    return {f"importance.{p}": float(v) for p, v in zip(df["param"], df["importance"]) if math.isfinite(v)}
