"""A budgeted sweep (issue 20) on a real Ray, Optuna and MLflow, with a cheap trainable of its own:
the plan printed and logged, the budget spent within one eval period, the searcher told each trial's
best value (not its last), paused trials resumed exactly from their checkpoints, and a sweep killed
in the middle resumed with its rungs and spending intact, repeating no eval period."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sessions import kill_session

pytestmark = pytest.mark.slow  # whole sweeps: a minute or two each

BUDGET = 30.0  # cpu-s: a couple of minutes of wall time on 2 cores
SPACE = '''
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from sweeper import Promotion, Sweep
from trainables.config import Config


@dataclass(frozen=True)
class Walk(Config):
    x: float = 0.0
    num_evals: int = 4
    seed: int = 0


def fit(cfg, report, restore_from=None):
    """A noisy walk that improves for 3 periods, then worsens: its best is not its last. Its state
    (value, period, RNG) lives only in its checkpoints."""
    state = {"period": 0, "value": (cfg.x - 0.3) ** 2, "rng": None}
    rng = random.Random(cfg.x)
    if restore_from:
        state = json.loads((Path(restore_from) / "state.json").read_text())
        rng.setstate(tuple(state["rng"][:1]) + (tuple(state["rng"][1]),) + tuple(state["rng"][2:]))
    while state["period"] < cfg.num_evals:
        time.sleep(0.3)
        state["period"] += 1
        state["value"] += (-0.1 if state["period"] <= 3 else 0.05) + rng.gauss(0, 0.01)
        state["rng"] = rng.getstate()
        directory = tempfile.mkdtemp()
        (Path(directory) / "state.json").write_text(json.dumps(state))
        report({"eval_period": state["period"], "loss": state["value"]}, directory)


sweep = Sweep("walk", Walk(), trainable=fit, metric="loss", mode="min", scheduler=Promotion(),
              space={"x": tune.uniform(-1, 1)}, num_samples=4)
'''


def _env():
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _sweeper(workdir, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=workdir, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _uninterrupted(x: float, periods: int) -> list[float]:
    """The walk's losses run straight through, in this process (no Tune, no pause)."""
    namespace = {}
    exec(SPACE, namespace)
    losses = []
    namespace["fit"](namespace["Walk"](x=x, num_evals=periods), lambda m, d: losses.append(m["loss"]))
    return losses


def _children(client, name="walk"):
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    return parent, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _history(client, run, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def _artifact(client, run, name):
    return json.loads(Path(client.download_artifacts(run.info.run_id, name)).read_text())


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("budget")
    (workdir / "walk.py").write_text(SPACE)
    result = _sweeper(workdir, "run", "walk.py", "--budget", f"{BUDGET:g}cpu-s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, MlflowClient(f"sqlite:///{workdir / 'sweeps' / 'mlflow.db'}")


def test_the_plan_is_printed_and_logged_and_the_budget_spent_within_one_period(budgeted):
    result, client = budgeted
    assert "budget plan: eta 3, rungs 2, 6" in result.stdout
    parent, children = _children(client)
    assert parent.data.params["budget"] == f"{BUDGET:g}cpu-s" and parent.data.params["plan.rungs"].startswith("2,6")
    spent, steps = 0.0, []
    for child in children:
        compute = _history(client, child, "compute_s")
        spent += compute[-1][1]
        steps += [b - a for (_, a), (_, b) in zip(compute, compute[1:])]
        assert all(b >= a for (_, a), (_, b) in zip(compute, compute[1:]))  # cumulative across pauses
    # The probe's cost came off the budget first; two trials at once may each finish the period they are in.
    assert spent <= BUDGET + 2 * max(steps)
    assert len(children) >= 3


def test_the_searcher_is_told_each_trials_best_not_its_last(budgeted):
    _, client = budgeted
    parent, children = _children(client)
    told = _artifact(client, parent, "searcher_trials.json")
    worsened = 0
    for child in children:
        losses = _history(client, child, "loss")
        entry = told[child.data.tags["sweeper.trial_id"]]
        for step, value in entry["intermediate"].items():
            assert value == pytest.approx(min(v for s, v in losses if s <= int(step)))
        if entry["state"] == "COMPLETE":
            assert entry["value"] == pytest.approx(min(v for _, v in losses))
        worsened += losses[-1][1] > min(v for _, v in losses)
    assert worsened, "no trial got worse after its best: the test would not tell best from last"


def test_paused_trials_resume_exactly_and_the_best_train_to_a_long_horizon(budgeted):
    _, client = budgeted
    parent, children = _children(client)
    rungs = _artifact(client, parent, "rungs.json")
    promoted = {d["trial_id"] for d in rungs["decisions"] if d["decision"] == "promoted"}
    assert promoted, rungs
    for child in children:
        if child.data.tags["sweeper.trial_id"] not in promoted:
            continue
        losses = _history(client, child, "loss")
        assert [s for s, _ in losses] == list(range(1, len(losses) + 1))  # every period once, in order
        expected = _uninterrupted(float(child.data.params["x"]), len(losses))
        assert [v for _, v in losses] == pytest.approx(expected, abs=1e-12)
        assert "promoted" in child.data.tags["sweeper.rungs"]
    longest = max(len(_history(client, c, "loss")) for c in children)
    assert longest > rungs["rungs"][1]  # someone trained past the second rung


def _search_state(workdir: Path) -> dict | None:
    states = list((workdir / "sweeps" / "ray_results").glob("walk-*/search_state.json"))
    try:
        return json.loads(states[0].read_text()) if states else None
    except ValueError:
        return None


def test_a_budgeted_sweep_killed_in_the_middle_resumes_its_rungs_and_budget(tmp_path):
    (tmp_path / "walk.py").write_text(SPACE)
    with (tmp_path / "first.log").open("w") as log:
        sweep = subprocess.Popen([sys.executable, "-m", "sweeper", "run", "walk.py", "--budget", f"{BUDGET:g}cpu-s"],
                                 cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while True:  # until some trials wait at their bracket's first rung (bracket s starts at rung s)
                state = _search_state(tmp_path)
                if state and state["scheduler"] and \
                        sum(len(rungs[s]) for s, rungs in enumerate(state["scheduler"]["records"])) >= 2:
                    break
                assert sweep.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
                time.sleep(0.5)
        finally:
            kill_session(sweep.pid)
            sweep.wait()
    before = _search_state(tmp_path)
    result = _sweeper(tmp_path, "resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = _search_state(tmp_path)
    # Every rung record made before the kill is still there, with the same value: nothing re-ran to it.
    for s, rungs in enumerate(before["scheduler"]["records"]):
        for k, recorded in enumerate(rungs):
            for trial_id, value in recorded.items():
                assert after["scheduler"]["records"][s][k][trial_id] == pytest.approx(value)
    assert sum(after["budget"]["spent_by"].values()) >= sum(before["budget"]["spent_by"].values())
    client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'mlflow.db'}")
    parent, children = _children(client)
    assert parent.info.status == "FINISHED"
    for child in children:
        steps = [s for s, _ in _history(client, child, "loss")]
        assert steps == list(range(1, len(steps) + 1)), (child.data.tags["sweeper.trial_id"], steps)
