"""The sweep report (`python -m sweeper report NAME`, and `report.html` on a sweep's parent run) and
`fid_best` in the runs table.

Two records: the shared quick GAN sweep (a finished sweep, written by the real driver), and a sweep
still running, made here with MLflow's own client in a real sqlite store in the layout the driver and
the trials write (a classifier-like metric, `val_acc (max)`, no outcome tags yet, a conditional
param, a trial that failed before its first period). The page is opened in a real headless Chromium
(Debian's `chromium` driven by Playwright, as tests/test_ui_browser.py does) and each figure's data
is read from the page and compared with the MLflow record."""
import base64
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

EXTERNAL = re.compile(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*['\"]?(https?:)?//", re.I)
# Each figure's traces as the page holds them (plotly keeps a figure's data on its div).
FIGURES_JS = """Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => d.data.map(t => ({
    type: t.type, name: t.name, y: t.y ? Array.from(t.y) : null,
    lines: t.dimensions ? t.dimensions.map(x => x.values.length) : null})))"""
PARCOORDS, IMPORTANCE, CURVES, BEST_SO_FAR = range(4)  # the figures' order on the page


def _cli(*args, cwd, uri=None):
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _open(browser, path):
    """(the page's figures, its images' natural widths, console errors) of a report file, offline."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, offline=True)
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length === 4 && "
                           "Array.from(document.querySelectorAll('.js-plotly-plot')).every(d => d.data)")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    figures = page.evaluate(FIGURES_JS)
    widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
    context.close()
    return figures, widths, errors


# -- a running sweep of another kind, in a real sqlite store ------------------------------------

RUNNING_TRIALS = {  # trial id -> (status, params, val_acc per period)
    "t0001": ("RUNNING", {"lr": 1e-4, "optim": "adam", "beta1": 0.5}, [0.61, 0.70, 0.74]),
    "t0002": ("RUNNING", {"lr": 3e-3, "optim": "sgd"}, [0.55, 0.52]),
    "t0003": ("FINISHED", {"lr": 1e-2, "optim": "adam", "beta1": 0.9}, [0.50]),
    "t0004": ("RUNNING", {"lr": 5e-4, "optim": "sgd"}, [0.66, 0.71, 0.69, 0.80]),
    "t0005": ("FAILED", {"lr": 2e-2, "optim": "adam", "beta1": 0.7}, []),
}


@pytest.fixture(scope="module")
def running_sweep(tmp_path_factory):
    """(folder, store URI): a classifier-like sweep with 4 planned periods, its trials mid-way."""
    folder = tmp_path_factory.mktemp("running_sweep")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("catdog", artifact_location=(folder / "artifacts").as_uri())
    parent = client.create_run(experiment, tags={"sweeper.kind": "ClassifierConfig"}).info.run_id
    client.log_batch(parent, params=[Param("metric", "val_acc (max)"), Param("searched", "beta1,lr,optim"),
                                     Param("num_evals", "4"), Param("num_samples", "8")])
    for n, (trial_id, (status, params, values)) in enumerate(RUNNING_TRIALS.items()):
        run = client.create_run(experiment, run_name=f"run_trial_{trial_id}",
                                tags={"mlflow.parentRunId": parent, "sweeper.trial_id": trial_id}).info.run_id
        client.log_batch(run, params=[Param(k, str(v)) for k, v in params.items()])
        best = -math.inf
        for step, value in enumerate(values, start=1):
            best = max(best, value)
            stamp = 1_700_000_000_000 + 1000 * (10 * step + n)
            client.log_batch(run, metrics=[Metric(k, v, stamp, step) for k, v in {
                "val_acc": value, "val_acc_best": best, "kimg": 2.5 * step, "compute_s": 30.0 * step,
                "eval_period": step}.items()])
        if status != "RUNNING":
            client.set_terminated(run, status=status)
    return folder, uri


def test_a_running_sweep_of_another_kind_renders_with_its_own_metric(running_sweep, browser):
    folder, uri = running_sweep
    result = _cli("report", "catdog", "-o", "out/catdog.html", cwd=folder, uri=uri)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (folder / "out" / "catdog.html").read_text()
    assert not EXTERNAL.search(page)
    figures, widths, errors = _open(browser, folder / "out" / "catdog.html")
    assert errors == []
    curves = figures[CURVES]
    assert sorted(t["name"] for t in curves) == sorted(RUNNING_TRIALS)  # one trace per trial, the failed one too
    assert {t["name"]: t["y"] for t in curves} == {t: v for t, (_, _, v) in RUNNING_TRIALS.items()}
    parcoords, = figures[PARCOORDS]
    assert set(parcoords["lines"]) == {4}  # every axis has a line per trial with a val_acc
    assert figures[BEST_SO_FAR][0]["y"][-1] == 0.80  # max: the metric's mode is the parent's
    assert [t["type"] for t in figures[IMPORTANCE]] == ["bar"]  # rebuilt from the record: none logged yet
    assert widths == []  # no grids: a classifier's trials draw none
    assert "stopped at period 1" in page  # t0003 ended before its 4 periods


def test_an_unknown_sweep_or_a_bad_output_is_one_line_and_exit_2(running_sweep, monkeypatch, capsys):
    from sweeper.cli import main

    folder, uri = running_sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(folder)
    for args, named in ((["nosuch", "-o", "x.html"], "nosuch"), (["catdog", "-o", "x.png"], "x.png"),
                        (["catdog", "--top", "-1"], "-1")):
        assert main(["report", *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and named in err, err
    assert not list(folder.glob("x.*")) and not list(folder.glob(".x.*"))


# -- the quick GAN sweep -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick(quick_sweep):
    """(client, its folder, parent run, trial runs) of the shared quick sweep."""
    _, client, workdir = quick_sweep
    experiment = client.get_experiment_by_name("wgangp")
    runs = client.search_runs([experiment.experiment_id])
    parent, = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, workdir, parent, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.slow
def test_the_report_of_the_quick_sweep_shows_every_trial_and_the_winners_measured_grid(quick, browser, tmp_path):
    client, workdir, parent, trials = quick
    result = _cli("report", "wgangp", "-o", str(tmp_path / "report.html"), "--top", "3", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (tmp_path / "report.html").read_text()
    assert not EXTERNAL.search(page)
    figures, widths, errors = _open(browser, tmp_path / "report.html")
    assert errors == []
    fid = {r.data.tags["sweeper.trial_id"]: [m.value for m in sorted(client.get_metric_history(r.info.run_id, "fid"),
                                                                      key=lambda m: m.step)] for r in trials}
    curves = figures[CURVES]
    assert len(curves) == len(trials) and {t["name"]: t["y"] for t in curves} == fid
    parcoords, = figures[PARCOORDS]
    assert set(parcoords["lines"]) == {sum(any(map(math.isfinite, v)) for v in fid.values())}
    assert len(parcoords["lines"]) == len(parent.data.params["searched"].split(",")) + 1
    assert figures[BEST_SO_FAR][0]["y"][-1] == pytest.approx(min(v for vs in fid.values() for v in vs))
    assert len(widths) == min(3, len(trials)) and all(w > 0 for w in widths)
    # The first grid is the winner's measured checkpoint's, byte for byte.
    winner = next(r for r in trials if r.data.tags["sweeper.trial_id"] == parent.data.tags["sweeper.best_trial"])
    with tempfile.TemporaryDirectory() as tmp:
        with open(client.download_artifacts(winner.info.run_id, "final/grid.png", tmp), "rb") as f:
            grid = base64.b64encode(f.read()).decode()
    assert re.findall(r"<img [^>]*src='data:image/png;base64,([^']+)'", page)[0] == grid


@pytest.mark.slow
def test_the_driver_logs_the_report_on_the_parent_run(quick):
    client, _, parent, trials = quick
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    with tempfile.TemporaryDirectory() as tmp:
        with open(client.download_artifacts(parent.info.run_id, "report.html", tmp)) as f:
            page = f.read()
    assert not EXTERNAL.search(page) and page.count("class=\"plotly-graph-div\"") == 4
    assert all(r.data.tags["sweeper.trial_id"] in page for r in trials)


@pytest.mark.slow
def test_each_trial_run_carries_its_best_fid_so_far_at_every_period(quick):
    client, _, _, trials = quick
    checked = 0
    for run in trials:
        fid = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "fid")}
        best = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "fid_best")}
        diverged = run.data.metrics.get("diverged_at_period")
        # Every period with a FID has its best so far (a diverged period reports none: no finite best to log).
        assert set(best) == {s for s in fid if diverged is None or s < diverged}, run.info.run_id
        for step, value in best.items():
            assert value == min(v for s, v in fid.items() if s <= step), (run.info.run_id, step)
            checked += 1
    assert checked >= len(trials)


@pytest.mark.slow
def test_the_shared_runs_view_shows_fid_best_next_to_fid_and_fid_final(quick):
    client, _, parent, _ = quick
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags["mlflow.sharedViewState.sweeper"])
    columns = view["selectedColumns"]
    metrics = [c for c in columns if c.startswith("metrics.")]
    assert metrics[:3] == ["metrics.`fid_final`", "metrics.`fid_best`", "metrics.`fid`"], columns
    assert view["orderByKey"] == "metrics.`fid_final`" and view["orderByAsc"] is True
