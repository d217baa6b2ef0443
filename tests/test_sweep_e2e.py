"""The README's quick start, end to end: a real Ray Tune sweep with Optuna and promotion-based
successive halving (the GAN default), real GAN training on toy-faces, real FID, everything landing
in a real MLflow sqlite store."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # real sweeps: a few minutes on two CPU cores


# The end of the sweep's report, line by line (sweeper.cli._report); one regex per line, in this order.
REPORT_LINES = [
    r"best trial: (?P<trial>\S+)  fid_final (?P<fid_final>\S+)  \(.+\); best per-eval fid (?P<best_fid>\S+)",
    r"best config: (?P<config>.+)",
    r"hand-tuned baseline \(warm start\): fid_final (?P<baseline>\S+) \(trial (?P<baseline_trial>\S+)\); "
    r"(?:the best searched trial is (?P<better>\S+) better|the search did NOT beat it: its best trial is (?P<worse>\S+) worse)"
    r"; (?:(?P<agrees>the selection draw \(fid_select\) agrees)|inside the noise: on the independent selection draw "
    r"\(fid_select\) it is (?P<again>\S+) (?P<again_sign>better|worse))",
    r"(?:  trial \S+ = warm_start\[\d\] .+)?",  # what the baseline ran, where it names a warm start
    r"registered model: models:/(?P<model>[^/]+)/(?P<version>\d+); @best (?P<decision>.+)",
    r"MLflow store: sqlite:///(?P<db>\S+)",
    r"open the UI: python -m sweeper ui   \(the runs: http://127\.0\.0\.1:5000/#/experiments/(?P<experiment>\d+)/runs"
    r"\?viewStateShareKey=\w+\)",
]


def _report(stdout: str) -> dict:
    """The named fields of the report's last lines, which must come in REPORT_LINES' order and shape
    and end the output (a pattern that matches an empty line is optional)."""
    lines = stdout.rstrip("\n").split("\n")
    block = lines[max(i for i, line in enumerate(lines) if line.startswith("best trial: ")):]
    fields = {}
    for pattern in REPORT_LINES:
        match = re.fullmatch(pattern, block[0]) if block else None
        if match is None and re.fullmatch(pattern, ""):
            continue
        assert match, (pattern, block[:1])
        fields.update({k: v for k, v in match.groupdict().items() if v is not None})
        block = block[1:]
    assert block == [], block
    return fields


def _store(db: Path) -> dict:
    """The wgangp experiment's runs read straight from the sqlite tables, apart from MLflow's client
    and from the sweep's own table: run id -> {"params", "tags", "metrics": key -> [values]}."""
    with sqlite3.connect(db) as connection:
        (experiment,), = connection.execute("select experiment_id from experiments where name = 'wgangp'")
        runs = {run_id: {"params": {}, "tags": {}, "metrics": {}} for (run_id,) in connection.execute(
            "select run_uuid from runs where experiment_id = ?", (experiment,))}
        for table in ("params", "tags"):
            for run_id, key, value in connection.execute(f"select run_uuid, key, value from {table}"):
                if run_id in runs:
                    runs[run_id][table][key] = value
        for run_id, key, value in connection.execute("select run_uuid, key, value from metrics order by step, timestamp"):
            if run_id in runs:
                runs[run_id]["metrics"].setdefault(key, []).append(value)
        (best_run,), = connection.execute(
            "select v.run_id from registered_model_aliases a join model_versions v on v.name = a.name and "
            "v.version = a.version where a.name = ? and a.alias = 'best'", (MODEL,))
    return {"experiment": str(experiment), "runs": runs, "best_run": best_run}


def test_prints_the_best_trial_and_how_to_open_the_ui(quick_sweep):
    result, client, workdir = quick_sweep
    report, store = _report(result.stdout), _store(workdir / "sweeps" / "mlflow.db")
    winner = store["runs"][store["best_run"]]
    # The trial named is the one @best holds, with its fid_final and its lowest per-eval FID (4 digits).
    assert report["trial"] == winner["tags"]["sweeper.trial_id"]
    assert float(report["fid_final"]) == pytest.approx(winner["metrics"]["fid_final"][-1], rel=5e-4)
    assert float(report["best_fid"]) == pytest.approx(min(winner["metrics"]["fid"]), rel=5e-4)
    # Its config: every value is the one its run logged (floats to the 3 digits printed, or more).
    items = [item.split("=", 1) for item in report["config"].split(", ")]
    config = dict(items)
    assert len(config) == len(items), items  # each key once
    assert {"optimizer", "g_lr", "d_lr", "z_dim"} <= set(config)  # searched on every branch of the space
    for key, shown in config.items():
        logged = winner["params"][key]
        try:
            assert float(shown) == pytest.approx(float(logged), rel=5e-3), key
        except ValueError:
            assert shown == logged, key
    registered = client.get_model_version_by_alias(MODEL, "best")
    assert (report["model"], report["version"]) == (MODEL, str(registered.version))
    # The store it names is this sweep's, and the UI link opens this sweep's experiment.
    assert Path(report["db"]).resolve() == (workdir / "sweeps" / "mlflow.db").resolve()
    assert report["experiment"] == store["experiment"]


def test_the_console_of_a_quick_sweep_is_short_and_says_what_matters(quick_sweep):
    result, client, _ = quick_sweep
    # Lines as a terminal shows them: a progress bar's "\r" updates overwrite one line.
    lines = (result.stdout + result.stderr).rstrip("\n").split("\n")
    assert len(lines) <= 80, "\n".join(lines)
    assert not any("Checkpoint successfully created" in line for line in lines)
    period_lines = [line for line in lines if " period " in line and " fid " in line and "img/s" in line]
    children = _runs(client)[1]
    periods = sum(len(client.get_metric_history(c.info.run_id, "fid")) for c in children)
    assert len(period_lines) == periods  # one line per finished eval period
    assert all(re.search(rf"\|\s+{column}\s+\|", result.stdout) for column in ("fid", "kid", "kimg", "img_per_s"))
    assert "#/experiments/" in result.stdout and "viewStateShareKey=sweeper" in result.stdout


def test_the_parent_run_holds_the_trial_table_curves_grids_and_importance(quick_sweep):
    _, client, workdir = quick_sweep
    (parent,), children = _runs(client)
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.parquet", "trials.csv", "trials.html", "fid_curves.png", "top_grids.png",
            "param_importance.csv", "param_importance.png", "summary.json"} <= names
    importance = pd.read_csv(client.download_artifacts(parent.info.run_id, "param_importance.csv", str(workdir)))
    assert set(importance["param"]) == set(parent.data.params["searched"].split(","))
    html = Path(client.download_artifacts(parent.info.run_id, "trials.html", str(workdir))).read_text()
    assert all(c.data.tags["sweeper.trial_id"] in html for c in children)


def _runs(client):
    experiment = client.get_experiment_by_name("wgangp")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_mlflow_holds_a_parent_run_and_nested_trial_runs(quick_sweep):
    _, client, _ = quick_sweep
    parents, children = _runs(client)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) >= 4
    extractor = parents[0].data.tags["sweeper.fid_extractor"]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.data.tags["sweeper.fid_extractor"] == extractor
        assert child.info.status == "FINISHED"
        assert {"g_lr", "d_lr", "optimizer", "z_dim", "d_norm", "g_norm", "loss"} <= set(child.data.params)
        fids = client.get_metric_history(child.info.run_id, "fid")
        assert [m.step for m in fids] == list(range(1, len(fids) + 1))  # step = eval period
        assert [m.step for m in client.get_metric_history(child.info.run_id, "kid")] == [m.step for m in fids]
        grids = [a.path for a in client.list_artifacts(child.info.run_id, "grids")]
        assert len(grids) == len(fids) and all(g.endswith(".png") for g in grids)


def test_promotion_pauses_trials_at_the_first_rung_and_only_the_promoted_reach_max_t(quick_sweep):
    result, client, workdir = quick_sweep
    (parent,), children = _runs(client)
    # --quick's 4 eval periods: Promotion's rungs 2 and 4 (max_t), eta 3. Every trial pauses at 2; a
    # promoted one resumes and completes at 4; one never promoted ends stopped-early at 2.
    record = json.loads(Path(client.download_artifacts(parent.info.run_id, "rungs.json", str(workdir))).read_text())
    assert record["rungs"] == [2, 4] and record["eta"] == 3
    decided = {}
    for row in record["decisions"]:
        decided.setdefault(row["trial_id"], {})[row["rung"]] = (row["decision"], row["value"])
    outcomes = [c.data.tags["sweeper.outcome"] for c in children]
    assert "stopped-early" in outcomes and "completed" in outcomes, outcomes
    expected = {"completed": (4, ["promoted", "completed"]), "stopped-early": (2, ["stopped"])}
    for child, outcome in zip(children, outcomes):
        trial_id = child.data.tags["sweeper.trial_id"]
        fids = [m.value for m in client.get_metric_history(child.info.run_id, "fid")]
        if outcome not in expected:  # a diverged trial (it may happen to a searched config) ends where it broke
            continue
        periods, decisions = expected[outcome]
        assert len(fids) == periods and trial_id in decided, (trial_id, outcome, fids)
        rungs = sorted(decided[trial_id])
        assert rungs == [2, 4][:len(decisions)] and [decided[trial_id][r][0] for r in rungs] == decisions
        # The value at each rung is the objective, fid_best: the lowest per-eval FID up to the rung.
        for rung in rungs:
            assert decided[trial_id][rung][1] == pytest.approx(min(fids[:rung]), rel=1e-9)
        tag = child.data.tags["sweeper.rungs"].split("; ")
        assert [part.split(":")[0] for part in tag] == [str(r) for r in rungs]
        assert [part.split()[-1] for part in tag] == decisions
    # The best configuration at the first rung is always promoted.
    at_first = {t: rungs[2] for t, rungs in decided.items() if 2 in rungs}
    assert at_first[min(at_first, key=lambda t: at_first[t][1])][0] == "promoted"
    counts = [sum(r in rungs for rungs in decided.values()) for r in (2, 4)]
    assert f"rungs: {counts[0]} at 2, {counts[1]} at 4 eval periods" in result.stdout


MODEL = "wgangp-quick-generator"  # --quick sweeps register apart from real ones


def test_quick_sweeps_register_apart_and_best_is_the_lowest_fid_select_among_the_reported(quick_sweep):
    _, client, _ = quick_sweep
    _, children = _runs(client)
    assert [m.name for m in client.search_registered_models()] == [MODEL]
    selected = {c.info.run_id: c.data.metrics["fid_select"] for c in children if "fid_select" in c.data.metrics}
    final = {c.info.run_id: c.data.metrics["fid_final"] for c in children if "fid_final" in c.data.metrics}
    # top_k = 1: the top searched and the top warm-start trial, each measured on the selection draw
    # and, as its group's pick, on the report draw.
    assert len(final) == 2 and set(final) == set(selected)
    # The winner is picked by fid_select; fid_final, on another draw, took no part.
    version = client.get_model_version_by_alias(MODEL, "best")
    assert version.run_id == min(final, key=lambda run_id: selected[run_id])
    assert float(version.tags["fid_final"]) == pytest.approx(final[version.run_id], rel=1e-5)
    assert float(version.tags["fid_select"]) == pytest.approx(selected[version.run_id], rel=1e-5)
    assert version.tags["sweeper.fid_final_draw"] == "report-half-v1"
    assert version.tags["sweeper.fid_final_extractor"] == "inception-v3-compat"
    assert version.tags["sweeper.final_fid_samples"] == "64" and version.tags["sweeper.ref_samples"] == "96"
    assert version.tags["sweeper.best_alias_decision"].startswith("moved")
    assert "fid_final" in version.description


def test_fid_final_is_the_standard_fid_and_every_fid_names_its_extractor_and_samples(quick_sweep):
    result, client, _ = quick_sweep
    parents, children = _runs(client)
    parent = parents[0]
    assert parent.data.tags["sweeper.fid_final_extractor"] == "inception-v3-compat"
    # On a CPU the per-eval FID is the labelled random-conv proxy.
    assert parent.data.tags["sweeper.fid_extractor"] == "random-conv-v1-seed0"
    assert "a cheap proxy" in result.stdout and "inception-v3-compat, 64 generated vs 96 real images" in result.stdout
    for run in [parent, *children]:
        assert (run.data.params["fid_samples"], run.data.params["ref_samples"],
                run.data.params["final_fid_samples"]) == ("512", "96", "64")  # quick's 512, the fixture's --set
    for child in children:
        if "fid_final" in child.data.metrics:
            assert child.data.tags["sweeper.fid_final_extractor"] == "inception-v3-compat"


def test_warm_starts_enter_at_the_first_rung_like_any_configuration(quick_sweep):
    _, client, _ = quick_sweep
    _, children = _runs(client)
    origins = [c.data.tags["sweeper.proposed_by"] for c in children]
    assert origins.count("warm-start") == 2, origins
    for child in children:
        if child.data.tags["sweeper.proposed_by"] == "warm-start":
            # With Promotion a hand-tuned config pauses at rung 2 like the others and reaches max_t only
            # if promoted (Ray's ASHA, which never stopped warm starts, always ran them to 4).
            evals = len(client.get_metric_history(child.info.run_id, "fid"))
            assert (evals, child.data.tags["sweeper.outcome"]) in ((2, "stopped-early"), (4, "completed")), evals
            assert child.data.tags["sweeper.rungs"].startswith("2: ")


def test_best_holds_the_winning_trials_best_checkpoint_and_generates_any_batch(quick_sweep):
    import mlflow
    import torch

    from trainables.config import GANConfig, field_types
    from trainables.training.checkpoint import CHECKPOINT_FILE, load_generator, load_generator_state

    _, client, workdir = quick_sweep
    version = client.get_model_version_by_alias(MODEL, "best")
    run = client.get_run(version.run_id)
    trial_id = run.data.tags["sweeper.trial_id"]
    assert version.tags["sweeper.trial_id"] == trial_id
    # The winner's best checkpoint, found independently of the sweep's own bookkeeping: the eval
    # period of the lowest per-eval FID in the trial's MLflow history, among the checkpoints that
    # Tune kept in the trial's directory (each checkpoint says which period it closed).
    fids = client.get_metric_history(run.info.run_id, "fid")
    best_period = min(fids, key=lambda m: m.value).step
    assert int(version.tags["sweeper.eval_period"]) == best_period
    trial_dirs = [d for d in (workdir / "sweeps" / "ray_results").glob("*/*") if d.is_dir() and trial_id in d.name]
    assert len(trial_dirs) == 1, trial_dirs
    kept = {torch.load(c / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["progress"]["eval_period"]: c
            for c in trial_dirs[0].glob("checkpoint_*")}
    assert best_period in kept, sorted(kept)

    # The registered program's weights are exactly that checkpoint's published (EMA) generator, and
    # no other kept checkpoint's.
    mlflow.set_tracking_uri(client._tracking_client.tracking_uri)
    G = mlflow.pytorch.load_model(f"models:/{MODEL}@best")
    registered = G.state_dict()
    for period, directory in sorted(kept.items()):
        expected = load_generator_state(directory)
        same = registered.keys() == expected.keys() and all(torch.equal(registered[k], expected[k]) for k in expected)
        assert same == (period == best_period), (period, best_period)

    # It generates what that checkpoint's generator generates in eval mode, for any batch size.
    types = field_types(GANConfig)
    cfg = GANConfig(**{k: (v == "True") if types[k] is bool else types[k](v)
                       for k, v in run.data.params.items() if k in types})
    reference = load_generator(cfg, kept[best_period]).eval()
    with torch.no_grad():
        for n in (1, 5):
            z = torch.randn(n, cfg.z_dim, generator=torch.Generator().manual_seed(n))
            images = G(z)
            assert images.shape == (n, 3, 32, 32)
            assert torch.allclose(images, reference(z), rtol=0, atol=1e-6)


def test_parent_run_compares_the_search_with_the_re_measured_baseline(quick_sweep):
    result, _, workdir = quick_sweep
    store = _store(workdir / "sweeps" / "mlflow.db")
    runs = store["runs"]
    parent_id, = [r for r, run in runs.items() if "mlflow.parentRunId" not in run["tags"]]
    children = {r: run for r, run in runs.items() if r != parent_id}
    # The warm starts (seed 000 and seed 004's WGAN-GP) told apart by their logged values alone.
    warm = {r for r, run in children.items() if run["params"]["g_lr"] == "8e-05" and run["params"]["z_dim"] == "200"
            and run["params"]["d_norm"] == "instance"}
    warm |= {r for r, run in children.items() if run["params"].get("beta1") == "0.0"
             and run["params"]["d_norm"] == "none" and run["params"]["z_dim"] == "128"}
    assert len(warm) == 2 and all(children[r]["tags"]["sweeper.proposed_by"] == "warm-start" for r in warm)
    # Each measured trial logged fid_final once; --quick measures each group's pick (top_k = 1).
    final = {r: run["metrics"]["fid_final"] for r, run in children.items() if "fid_final" in run["metrics"]}
    assert all(len(values) == 1 for values in final.values()), final
    baseline_run, = [r for r in final if r in warm]
    searched_run, = [r for r in final if r not in warm]
    baseline, gain = final[baseline_run][0], final[baseline_run][0] - final[searched_run][0]
    parent = runs[parent_id]["metrics"]
    assert parent["baseline_fid_final"] == [pytest.approx(baseline, rel=1e-9)]
    # Either sign: the search may not beat the hand-tuned configs, and then the gain is negative.
    assert parent["fid_final_gain_over_baseline"] == [pytest.approx(gain, rel=1e-9, abs=1e-9)]
    # The console says the same: the baseline's value and trial, and the gain's size and sign in words.
    report = _report(result.stdout)
    assert float(report["baseline"]) == pytest.approx(baseline, abs=0.005)
    assert report["baseline_trial"] == children[baseline_run]["tags"]["sweeper.trial_id"]
    told = float(report["better"]) if "better" in report else -float(report["worse"])
    assert told == pytest.approx(gain, abs=0.005)
    # ... and whether the selection draw agrees on the sign: the same two trials' fid_select.
    select = {r: children[r]["metrics"]["fid_select"][0] for r in (baseline_run, searched_run)}
    again = select[baseline_run] - select[searched_run]
    assert parent["fid_gain_within_noise"] == [float((again > 0) != (gain > 0))]
    if "agrees" in report:
        assert (again > 0) == (gain > 0)
    else:
        assert (again > 0) != (gain > 0) and report["again_sign"] == ("better" if again > 0 else "worse")
        assert float(report["again"]) == pytest.approx(abs(again), abs=0.005)
    # The sweep's fid_final is its winner's (@best, picked by fid_select), not the lowest fid_final measured.
    assert parent["fid_final"] == [pytest.approx(final[store["best_run"]][0], rel=1e-9)]
    assert runs[parent_id]["tags"]["sweeper.best_trial"] == runs[store["best_run"]]["tags"]["sweeper.trial_id"]


def test_ctrl_c_ends_every_run_killed_registers_nothing_and_says_how_to_resume(tmp_path):
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    sweep = subprocess.Popen(
        [sys.executable, "-m", "sweeper", "run", str(REPO / "search_spaces" / "wgangp.py"), "--quick",
         "--num-samples", "3", "--set", "num_evals=50", "--set", "ref_samples=64", "--name", "interrupted"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "sweeps" / "mlflow.db"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not _some_fid_logged(db):
        assert sweep.poll() is None, sweep.communicate()
        time.sleep(2)
    sweep.send_signal(signal.SIGINT)  # what Ctrl-C sends
    stdout, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert "sweep interrupted: nothing registered" in stdout
    assert "continue it: python -m sweeper resume interrupted" in stdout
    (state,) = tmp_path.glob("sweeps/ray_results/interrupted-*/sweeper.json")
    assert json.loads(state.read_text())["status"] == "interrupted"  # what `resume` picks up
    client = MlflowClient(f"sqlite:///{db}")
    assert client.search_registered_models() == []
    runs = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "KILLED" and children
    assert all(c.info.status == "KILLED" and c.data.tags["sweeper.outcome"] == "interrupted" for c in children)


def _some_fid_logged(db) -> bool:
    if not db.exists():
        return False
    with sqlite3.connect(db) as connection:
        try:
            return connection.execute("select count(*) from metrics where key = 'fid'").fetchone()[0] > 0
        except sqlite3.OperationalError:  # tables not created yet
            return False


def test_half_the_trials_are_proposed_once_tpe_is_informed(quick_sweep):
    # Under Promotion, once n_startup trials have a result at the first rung: by the rung model
    # ("tpe"), or for a third of those proposals at random ("random"; sweeper.search.rung_model).
    _, client, _ = quick_sweep
    _, children = _runs(client)
    origins = [c.data.tags["sweeper.proposed_by"] for c in children]
    assert origins.count("tpe") + origins.count("random") >= len(children) / 2, origins
    assert set(origins) <= {"warm-start", "startup", "tpe", "random"}, origins
