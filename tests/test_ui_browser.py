"""The MLflow UI as a user sees it after a quick sweep: `python -m sweeper ui` serves the store, and a
real headless Chromium (Debian's `chromium`, driven by Playwright; no browser is downloaded) opens the
URL it prints, the image grid of two trials and the registered model. Screenshots of each view are
kept in the test's tmp dir (ui_*.png)."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import free_port, wait_until_up

pytestmark = pytest.mark.slow  # needs the shared quick sweep (a few minutes)

MODEL = "wgangp-quick-generator"
TIMEOUT_MS = 30_000
ALIAS_CHIP = re.compile(r"^@\s*best$")  # MLflow's alias tag, not a tag value that mentions @best


@pytest.fixture(scope="module")
def ui(quick_sweep, tmp_path_factory):
    """`python -m sweeper ui` in the sweep's folder, a real process (stopped by its process group id):
    (the runs view URL it printed, the server's base URL)."""
    _, _, workdir = quick_sweep
    port, log = free_port(), tmp_path_factory.mktemp("ui") / "ui.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "sweeper", "ui", "--port", str(port)], cwd=workdir,
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + "/health", process, log)
        printed = re.search(rf"{re.escape(base)}/#/experiments/\d+/runs\S*", log.read_text())
        assert printed, log.read_text()[-2000:]
        yield printed.group(0), base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


@pytest.fixture(scope="module")
def trials(quick_sweep):
    """run name -> run id of the sweep's trial runs."""
    _, client, _ = quick_sweep
    experiment = client.get_experiment_by_name("wgangp")
    runs = client.search_runs([experiment.experiment_id])
    return {r.info.run_name: r.info.run_id for r in runs if "mlflow.parentRunId" in r.data.tags}


def _shot(page, tmp_path, name):
    path = tmp_path / f"ui_{name}.png"
    page.screenshot(path=path)
    print(f"screenshot: {path}")


def test_the_printed_url_lands_on_the_sweeps_trials_with_fid_columns_best_first(ui, page, trials, quick_sweep,
                                                                              tmp_path):
    url, _ = ui
    _, client, _ = quick_sweep
    experiment_id = client.get_experiment_by_name("wgangp").experiment_id
    assert re.fullmatch(rf"http://127\.0\.0\.1:\d+/#/experiments/{experiment_id}/runs\?viewStateShareKey=\w+", url)
    started = time.monotonic()
    page.goto(url)
    rows = page.locator(".ag-center-cols-container .ag-row, .ag-pinned-left-cols-container .ag-row")
    page.get_by_text(next(iter(trials)), exact=True).first.wait_for()
    headers = [h.strip() for h in page.locator(".ag-header-cell").all_inner_texts()]
    _shot(page, tmp_path, "runs")
    # No click needed: every trial run is a row (the metric sort shows them flat, not under the parent
    # run), with the sweep's metrics and searched params as columns.
    names = page.locator("[role=gridcell] a").all_inner_texts()
    assert set(trials) <= set(names), (sorted(trials), names)
    assert {"fid", "fid_final", "kid", "kimg"} <= set(headers), headers
    parent, = [r for r in client.search_runs([experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    searched = parent.data.params["searched"].split(",")
    assert searched[0] in headers, headers  # the first searched param (the rest are further right)
    # Ordered by fid_final (what is reported and compared), lowest first: the trial row on top has the
    # lowest fid_final. The winner is picked by fid_select, so it need not be that row (README).
    fid_final = {r.info.run_id: r.data.metrics["fid_final"] for r in client.search_runs([experiment_id])
                 if "fid_final" in r.data.metrics and r.info.run_id in trials.values()}
    first_trial = next(n for n in names if n.startswith("run_trial_"))
    assert trials[first_trial] == min(fid_final, key=fid_final.get), (first_trial, fid_final)
    assert client.get_model_version_by_alias(MODEL, "best").run_id in fid_final  # the winner was measured
    assert rows.count() >= len(trials)
    print(f"runs view: {time.monotonic() - started:.1f}s")


def test_the_image_grid_compares_two_trials_samples(ui, page, trials, tmp_path):
    url, _ = ui
    started = time.monotonic()
    page.goto(url)
    page.get_by_text(next(iter(trials)), exact=True).first.wait_for()
    names = [n for n in page.locator("[role=gridcell] a").all_inner_texts() if n in trials][:2]
    # A user's clicks: the chart view (its second icon); the eye column's menu: "Hide all runs", then the
    # eye of two trials; "samples" in the chart search (it keeps the image grids); the grid's step slider one
    # notch right, to the first eval period (it starts at step 0, where nothing was logged); the card's menu,
    # Configure: "Show run parameters" off (else the params text pushes the images out of sight), Save;
    # then the card's full-screen button.
    page.locator("label:has(input[value=CHART])").click()
    page.get_by_test_id("experiment-view-runs-visibility-column-header").click()
    page.get_by_text("Hide all runs", exact=True).click()
    for name in names:
        page.locator(".ag-row", has=page.get_by_text(name, exact=True)).locator(
            "label:has(.is-visibility-toggle-checkbox)").click()
    page.get_by_placeholder("Search metric charts").fill("samples")
    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(has_text="samples")
    slider = card.get_by_role("slider")
    slider.focus()
    page.keyboard.press("ArrowRight")
    assert slider.get_attribute("aria-valuenow") == "1"
    card.get_by_test_id("experiment-view-compare-runs-card-menu").click()
    page.get_by_role("menuitem", name="Configure").click()
    page.get_by_role("dialog").get_by_text("Show run parameters").click()
    page.get_by_role("button", name="Save changes").click()
    card.locator("[data-component-id=fullscreen_button_chartcard]").click()
    dialog = page.get_by_role("dialog")
    images = dialog.locator("img[src*='get-artifact']")
    page.wait_for_function("n => Array.from(document.querySelectorAll('[role=dialog] img[src*=\"get-artifact\"]'))"
                           ".filter(i => i.complete && i.naturalWidth > 0).length >= n", arg=2)
    _shot(page, tmp_path, "image_grid")
    loaded = images.evaluate_all("imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth])")
    shown = {re.search(r"run_uuid=(\w+)", src).group(1) for src, width in loaded if width > 0}
    assert shown == {trials[n] for n in names}, (loaded, names)
    assert all("samples" in src and "step%2B1%2B" in src for src, _ in loaded), loaded
    print(f"image grid: {time.monotonic() - started:.1f}s")


def test_the_registered_model_shows_best_with_its_fid_final(ui, page, quick_sweep, tmp_path):
    _, base = ui
    _, client, _ = quick_sweep
    best = client.get_model_version_by_alias(MODEL, "best")
    page.goto(f"{base}/#/models/{MODEL}")
    row = page.locator("tr, [role=row]").filter(has=page.get_by_text(f"Version {best.version}", exact=True))
    row.first.wait_for()
    _shot(page, tmp_path, "model")
    # the versions table: the alias chip ("@ best") and the version's tags ("fid_final: 312.7") in its row
    assert row.first.get_by_text(ALIAS_CHIP).count() == 1, row.first.inner_text()
    assert re.search(rf"fid_final\s*:\s*{re.escape(best.tags['fid_final'])}\b", row.first.inner_text())
    page.goto(f"{base}/#/models/{MODEL}/versions/{best.version}")
    tag_row = page.locator("tr, [role=row]").filter(has=page.get_by_text("fid_final", exact=True))
    tag_row.first.wait_for()
    _shot(page, tmp_path, "model_version")
    assert page.get_by_text(ALIAS_CHIP).count() == 1  # Aliases: @ best
    assert best.tags["fid_final"] in tag_row.first.inner_text().split()
