"""Population-based training end to end: a 4-member PBT sweep of WGAN-GP on toy faces, its driver and
everything it started SIGKILLed after the first exploits, then `python -m sweeper resume`d.

Checked against what the trials themselves logged, not against the code that wrote the lineage:
a clone's first period follows its donor's checkpoint (its kimg goes on from the donor's), the LRs
its optimisers used (`lr_g`, `lr_d`, read from the param groups) are its run's params, one run per
member and generation and one value per period after the resume, and the lineage table, the
winner's chain and the registered version's schedule.json agree."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import store_count
from mlflow.tracking import MlflowClient
from sessions import kill_session

from sweeper.tracking.lineage import CLONED_AT_TAG, CLONED_FROM_RUN_TAG, GENERATION_TAG, chain_to

pytestmark = pytest.mark.slow  # a real sweep, killed and resumed: minutes

# 10 periods, not 6: the fixture kills the sweep once 2 exploits have happened, and who exploits whom
# depends on the order results arrive in; with 6 periods one run on 2 cores ended after a single exploit.
MEMBERS, NUM_EVALS, STEPS, BATCH = 4, 10, 4, 16
SPACE = f'''
from sweeper import PBT, Range, Sweep
from trainables.config import GANConfig


def space(trial):
    trial.suggest_float("g_lr", 5e-5, 5e-4, log=True)
    trial.suggest_float("d_lr", 5e-5, 5e-4, log=True)


sweep = Sweep(
    name="population",
    config=GANConfig(data="toy-faces", loss="wgan-gp", resolution=32, g_width=8, d_width=8, batch_size={BATCH},
                     n_critic=1, steps_per_eval={STEPS}, num_evals={NUM_EVALS}, fid_samples=64, ref_samples=64,
                     final_fid_samples=64, eval_extractor="proxy"),
    space=space,
    scheduler=PBT(interval=1, quantile=0.5, mutations={{
        "g_lr": Range(1e-5, 1e-3, log=True), "d_lr": Range(1e-5, 1e-3, log=True), "n_critic": [1, 2],
        "gp_weight": Range(1.0, 100.0, log=True), "ema_decay": [0.0, 0.999]}}),
    num_samples={MEMBERS}, max_concurrent=2,
)
'''
MUTATED = ("d_lr", "ema_decay", "g_lr", "gp_weight", "n_critic")


def _env():
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pbt")
    (workdir / "space.py").write_text(SPACE)
    db = workdir / "sweeps" / "mlflow.db"
    clones = f"select count(*) from tags where key = '{GENERATION_TAG}' and value != '0'"
    with (workdir / "first.log").open("w") as log:
        sweep = subprocess.Popen([sys.executable, "-m", "sweeper", "run", "space.py"], cwd=workdir, env=_env(),
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 400
            # Killed once members have taken others' checkpoints, long before the population ends.
            while store_count(db, clones) < 2 or store_count(db, "select count(*) from metrics where key = 'fid'") < 8:
                assert sweep.poll() is None, (workdir / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no 2 exploits in 400 s"
                time.sleep(0.5)
        finally:
            kill_session(sweep.pid)
            sweep.wait()
    killed_at = store_count(db, "select count(*) from metrics where key = 'fid'")
    result = subprocess.run([sys.executable, "-m", "sweeper", "resume"], cwd=workdir, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("population").experiment_id
    runs = client.search_runs([experiment])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return workdir, result, killed_at, client, parent, children


def _steps(client, run, key="fid") -> dict[int, float]:
    history = client.get_metric_history(run.info.run_id, key)
    assert len({m.step for m in history}) == len(history), f"{run.info.run_name}: a period of {key} logged twice"
    return {int(m.step): m.value for m in history}


def test_members_took_checkpoints_and_the_resume_made_no_run_twice(population):
    _, result, killed_at, client, _, children = population
    assert killed_at < MEMBERS * NUM_EVALS, "the population finished before it was killed"
    assert "resuming " in result.stdout and "best trial:" in result.stdout
    keys = [(r.data.tags["sweeper.trial_id"], r.data.tags[GENERATION_TAG]) for r in children]
    assert len(keys) == len(set(keys)), f"a member's generation has two runs: {sorted(keys)}"
    assert len({trial for trial, _ in keys}) == MEMBERS
    assert any(int(generation) > 0 for _, generation in keys), "no exploit happened"
    for run in children:
        _steps(client, run)  # each period once
    latest = {}
    for trial, generation in keys:
        latest[trial] = max(latest.get(trial, 0), int(generation))
    for run in children:  # a member's earlier generations ended when their clone began
        if int(run.data.tags[GENERATION_TAG]) < latest[run.data.tags["sweeper.trial_id"]]:
            assert (run.info.status, run.data.tags.get("sweeper.outcome")) == ("FINISHED", "replaced"), run.info.run_name


def test_a_clone_goes_on_from_its_donors_checkpoint(population):
    _, _, _, client, _, children = population
    by_id = {r.info.run_id: r for r in children}
    clones = [r for r in children if CLONED_FROM_RUN_TAG in r.data.tags]
    assert clones
    for clone in clones:
        donor, at = by_id[clone.data.tags[CLONED_FROM_RUN_TAG]], int(clone.data.tags[CLONED_AT_TAG])
        kimg, donor_kimg = _steps(client, clone, "kimg"), _steps(client, donor, "kimg")
        if not kimg:
            continue  # killed, or exploited again, before its first period
        first = min(kimg)
        assert first == at + 1, f"{clone.info.run_name}: first period {first}, cloned at {at}"
        # Images shown to D go on from the donor's count at the checkpoint: the clone has its step.
        own = STEPS * int(clone.data.params["n_critic"]) * BATCH / 1000
        assert kimg[first] == pytest.approx(donor_kimg[at] + own), clone.info.run_name


def test_every_run_trained_with_its_params(population):
    """The LRs the optimisers had (param groups, read by the training loop) are the run's params:
    an exploit's new values were applied after the donor's optimiser state was loaded."""
    _, _, _, client, _, children = population
    for run in children:
        params = run.data.params
        for metric, key in (("lr_g", "g_lr"), ("lr_d", "d_lr")):
            used = _steps(client, run, metric)
            assert all(v == pytest.approx(float(params[key]), rel=1e-9) for v in used.values()), \
                (run.info.run_name, key, params[key], used)
        for key in MUTATED:  # the schedule, as the UI draws it
            logged = _steps(client, run, key)
            assert all(v == pytest.approx(float(params[key])) for v in logged.values()), (run.info.run_name, key)


def test_the_lineage_table_and_the_registered_schedule_give_the_same_chain(population):
    workdir, result, _, client, parent, children = population
    table = pd.read_parquet(client.download_artifacts(parent.info.run_id, "lineage.parquet", str(workdir)))
    assert sorted(table["run_id"]) == sorted(r.info.run_id for r in children)
    # Each member's runs chain: every clone's donor is a run of the sweep, at a period it logged.
    for row in table[table["cloned_from_run"].notna()].itertuples():
        donor = table[table["run_id"] == row.cloned_from_run].iloc[0]
        assert donor["first_period"] <= row.cloned_at <= donor["last_period"], row.run_id
    (version,) = client.search_model_versions("name = 'population-generator'")
    schedule = json.loads(Path(client.download_artifacts(
        version.run_id, "schedule.json", str(workdir))).read_text())
    assert version.tags["sweeper.schedule"] == f"runs:/{version.run_id}/schedule.json"
    chain = chain_to(table, version.run_id, int(version.tags["sweeper.eval_period"]))
    assert schedule["segments"] == json.loads(json.dumps(chain)), (schedule["segments"], chain)
    on_path = set(table[table["on_winner_path"]]["run_id"])
    assert on_path == {s["run_id"] for s in chain}
    assert schedule["segments"][0]["from_period"] == 1
    assert schedule["segments"][-1]["to_period"] == int(version.tags["sweeper.eval_period"])
    for key in MUTATED:
        assert schedule["base_config"][key] == pytest.approx(schedule["segments"][0]["values"][key])
