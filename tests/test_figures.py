"""The parent run's figures and tables, from real inputs: a trial table, metric curves, PNG sample
grids written by torchvision, and Optuna studies with COMPLETE, PRUNED, FAILED and diverged trials."""
import io
import math

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.utils import save_image

from sweeper.tracking import figures
from sweeper.tracking.outcomes import COMPLETED, DIVERGED, ERROR, INTERRUPTED, STOPPED

optuna.logging.set_verbosity(optuna.logging.ERROR)  # the failing trials are on purpose

OUTCOMES = {"t00": COMPLETED, "t01": STOPPED, "t02": COMPLETED, "t03": DIVERGED, "t04": STOPPED,
            "t05": ERROR, "t06": COMPLETED, "t07": STOPPED}
BEST = {"t00": 61.5, "t01": 212.0, "t02": 48.25, "t03": math.inf, "t04": 180.125, "t05": math.nan,
        "t06": 90.0, "t07": 333.3}


@pytest.fixture
def table():
    rows = []
    for i, (trial_id, outcome) in enumerate(OUTCOMES.items()):
        rows.append({"trial_id": trial_id, "run_id": f"run{i}", "outcome": outcome, "proposed_by": "tpe",
                     "warm_start": i == 0, "group": "searched", "best_fid": BEST[trial_id],
                     "last_fid": BEST[trial_id] * 1.1, "eval_periods": i, "kimg": 12.5 * i,
                     "trial_seconds": 3.25 * i, "error": "RuntimeError: boom" if outcome == ERROR else None,
                     "config.g_lr": 10 ** -(3 + i / 7), "config.optimizer": "adam" if i % 2 else "sgd"})
    frame = pd.DataFrame(rows)
    frame["fid_final"] = [65.0, math.nan, 50.5] + [math.nan] * 5
    return frame


def curves():
    rng = np.random.default_rng(0)
    out = {}
    for i, (trial_id, outcome) in enumerate(OUTCOMES.items()):
        n = 8 if outcome == COMPLETED else 3
        kimg = np.arange(1, n + 1) * 4.0
        fid = 400 / np.sqrt(kimg) * (1 + i / 8) + rng.uniform(0, 5, n)
        if outcome == DIVERGED:
            fid[-1] = math.inf
        if outcome == ERROR:
            fid[:] = math.nan
        out[trial_id] = pd.DataFrame({"kimg": kimg[::-1], "fid": fid[::-1]})  # order must not matter
    out["t00"].loc[2, "fid"] = math.nan  # a missed eval inside a curve
    out["t08"] = pd.DataFrame({"kimg": [4.0], "fid": [390.0]})  # one eval, then Ctrl-C
    return out


def test_trial_table_files_round_trip_best_first(table):
    files = figures.trial_table_files(table, "fid", "min")
    back = pd.read_csv(io.BytesIO(files["trials.csv"]))
    # Finite best first, ascending; inf (diverged) and NaN (error) last.
    assert back["trial_id"].tolist() == ["t02", "t00", "t06", "t04", "t01", "t07", "t03", "t05"]
    expected = table.set_index("trial_id").loc[back["trial_id"]].reset_index()
    for column in ["best_fid", "last_fid", "kimg", "trial_seconds", "config.g_lr", "fid_final"]:
        np.testing.assert_array_equal(back[column].to_numpy(float), expected[column].to_numpy(float))
    assert back["config.optimizer"].tolist() == expected["config.optimizer"].tolist()

    page = files["trials.html"].decode()
    assert all(f">{t}<" in page for t in OUTCOMES)
    assert page.index(">t02<") < page.index(">t00<") < page.index(">t05<")
    assert "<script" not in page and "<link" not in page and "http" not in page  # self-contained

    by_max = pd.read_csv(io.BytesIO(figures.trial_table_files(table, "fid_final", "max")["trials.csv"]))
    assert by_max["trial_id"].tolist()[:2] == ["t00", "t02"]  # a named column, highest first


def test_curves_one_line_per_trial_styled_by_outcome():
    data, outcomes = curves(), {**OUTCOMES, "t08": INTERRUPTED}
    fig = figures.curves_figure(data, outcomes, "t02", "fid", "min")
    ax = fig.axes[0]
    lines = {}
    for line in ax.get_lines():
        lines.setdefault(line.get_gid(), []).append(line)
    assert set(lines) == set(outcomes) - {"t05"}  # the error trial never measured a finite FID
    assert all(len(v) == 1 for v in lines.values())
    lines = {k: v[0] for k, v in lines.items()}
    for trial_id, line in lines.items():
        x, y = line.get_xdata(), line.get_ydata()
        assert np.isfinite(x).all() and np.isfinite(y).all() and (np.diff(x) > 0).all()
        frame = data[trial_id]
        assert len(y) == int(np.isfinite(frame["fid"]).sum())
    winner = lines["t02"]
    assert winner.get_linewidth() > max(line.get_linewidth() for k, line in lines.items() if k != "t02")
    assert winner.get_zorder() > max(line.get_zorder() for k, line in lines.items() if k != "t02")
    assert "winner t02" in ax.get_legend().get_texts()[0].get_text()
    assert lines["t08"].get_marker() == "o"  # a single point is still visible
    for trial_id in ("t01", "t04", "t07", "t08"):
        assert lines[trial_id].get_linestyle() == "--"
        assert lines[trial_id].get_alpha() < 1
    for trial_id in ("t00", "t06"):
        assert lines[trial_id].get_linestyle() == "-"
    assert lines["t03"].get_linestyle() == ":"  # diverged
    assert any("t05" in t.get_text() for t in ax.texts)  # the note on what is not plotted
    assert ax.get_yscale() == "log"
    figures.png(fig)

    image = Image.open(io.BytesIO(figures.fid_curves_png(data, outcomes, "t02", "fid", "min")))
    assert image.format == "PNG" and image.width > 600
    no_winner = figures.curves_figure(data, outcomes, None, "fid", "min").axes[0]
    assert not any("winner" in t.get_text() for t in no_winner.get_legend().get_texts())


def grid_png(seed: int, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    save_image(torch.rand(64, 3, size, size, generator=torch.Generator().manual_seed(seed)), buffer,
               format="png", nrow=8)
    return buffer.getvalue()


def test_top_grids_five_labelled_tiles_keep_the_grid_pixels(table):
    ranked = figures.ranked(table, "fid", "min").head(5)
    tiles = [(grid_png(i), figures.grid_label(row, "fid", ["g_lr", "optimizer"], "fid_final"))
             for i, (_, row) in enumerate(ranked.iterrows())]
    assert tiles[0][1] == ["t02", "best fid 48.2  fid_final 50.5", "g_lr=5.2e-4  optimizer=sgd"]
    assert tiles[2][1][1] == "best fid 90"  # no final value: none shown
    gap = 12
    canvas = np.asarray(Image.open(io.BytesIO(figures.top_grids_png(tiles, gap=gap))).convert("RGB"))
    grids = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data, _ in tiles]
    h, w = grids[0].shape[:2]
    assert canvas.shape[1] == 5 * w + 6 * gap
    band = canvas.shape[0] - h - gap
    assert band >= 3 * 14  # three label lines of at least 14 px
    for i, grid in enumerate(grids):
        left = gap + i * (w + gap)
        np.testing.assert_array_equal(canvas[band:band + h, left:left + w], grid)
        label = canvas[:band, left:left + w]
        assert (label.sum(axis=2) < 200).sum() > 300  # dark text pixels in this tile's label

    # A grid of another size is scaled to the others' size: tiles stay equal.
    mixed = [(grid_png(9, size=16), ["small"])] + tiles[:2]
    canvas = Image.open(io.BytesIO(figures.top_grids_png(mixed, gap=gap)))
    assert canvas.width == 3 * w + 4 * gap
    assert figures.top_grids_png([]) is None


def objective(trial):
    """g_lr decides the value; noise never does; beta1 exists only for adam (conditional).
    Like a sweep: poor trials pruned at step 1 (ASHA), a high lr diverges, some trials fail."""
    lr = trial.suggest_float("g_lr", 1e-5, 1e-2, log=True)
    trial.suggest_float("noise", 0.0, 1.0)
    trial.suggest_categorical("fixed", [64])
    if trial.suggest_categorical("optimizer", ["adam", "sgd"]) == "adam":
        trial.suggest_float("beta1", 0.0, 0.9)
    if trial.number % 9 == 4:
        raise ValueError("trial crashed")
    value = 50 + 100 * (math.log10(lr) + 3.5) ** 2
    if lr > 5e-3:
        trial.report(value, 0)
        return math.inf
    for step in range(3):
        trial.report(value * (1 + 1 / (step + 1)), step)
        if step == 1 and value > 120:
            raise optuna.TrialPruned
    return value


def study(n_trials, warm_start=None):
    s = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=3))
    if warm_start:
        s.enqueue_trial(warm_start)
    s.optimize(objective, n_trials=n_trials, catch=(ValueError,))
    return s


@pytest.mark.filterwarnings("ignore:Fixed parameter g_lr")  # the out-of-range warm start, on purpose
def test_param_importance_ranks_what_matters_and_lists_every_param():
    s = study(60, warm_start={"g_lr": 0.05, "optimizer": "sgd"})  # outside the range: left out
    states = pd.Series([t.state.name for t in s.trials]).value_counts()
    assert states["COMPLETE"] >= 5 and states["PRUNED"] >= 5 and states["FAIL"] >= 5
    assert any(t.value == math.inf for t in s.trials if t.state.name == "COMPLETE")
    params = ["g_lr", "noise", "optimizer", "beta1", "fixed", "never_sampled"]
    df = figures.param_importance(s, params)
    assert list(df.columns) == ["param", "importance", "evaluator", "trials", "reason"]
    assert sorted(df["param"]) == sorted(params)
    assert df["param"].iloc[0] == "g_lr" and df["importance"].iloc[0] > 0.5
    assert df.set_index("param").loc["g_lr", "importance"] > 2 * df.set_index("param").loc["noise", "importance"]
    rated = df.set_index("param")
    assert math.isnan(rated.loc["never_sampled", "importance"]) and rated.loc["never_sampled", "reason"]
    assert rated.loc["beta1", "reason"].startswith("conditional")
    assert rated.loc["fixed", "importance"] == 0 and rated.loc["fixed", "reason"] == "one value in every trial"
    assert math.isclose(df["importance"].sum(skipna=True), 1.0)
    assert (df["trials"] == states["COMPLETE"] + states["PRUNED"] - 1).all()  # pruned counted, failed not
    assert (df["evaluator"] == "PedAnovaImportanceEvaluator").all()

    files = figures.importance_files(df)
    back = pd.read_csv(io.BytesIO(files["param_importance.csv"]))
    np.testing.assert_array_equal(back["importance"].to_numpy(float), df["importance"].to_numpy(float))
    assert Image.open(io.BytesIO(files["param_importance.png"])).format == "PNG"
    metrics = figures.importance_metrics(df)
    assert set(metrics) == {f"importance.{p}" for p in params if p != "never_sampled"}
    assert metrics["importance.g_lr"] == df["importance"].iloc[0]


def test_param_importance_with_too_few_trials_is_empty_with_a_reason():
    for n in (0, 2):
        df = figures.param_importance(study(n), ["g_lr", "noise"])
        assert df.empty and list(df.columns) == ["param", "importance", "evaluator", "trials", "reason"]
        assert df["importance"].dtype == float and "importance needs" in df.attrs["reason"]
        files = figures.importance_files(df)
        assert Image.open(io.BytesIO(files["param_importance.png"])).format == "PNG"
        assert figures.importance_metrics(df) == {}
