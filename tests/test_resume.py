"""A long sweep survives its processes dying: one trial process SIGKILLed mid-run is retried from its
checkpoint; then the driver and everything it started are SIGKILLed, and `python -m sweeper resume`
finishes the same sweep: one parent run, one child run per trial, every eval period logged once.
And a resume repeats nothing that finished: the resumed driver is SIGKILLed again as the winner's
model version appears (inside its registration), and once more after the registration (in the
summary); the last resume finishes with one model version, each final number measured and logged
once."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import store_count
from mlflow.tracking import MlflowClient
from sessions import kill_session, session

from sweeper.driver import final, resume
from sweeper.driver.resume import SweepState

pytestmark = pytest.mark.slow  # real sweeps (killed, resumed, failing): minutes

NUM_SAMPLES, NUM_EVALS = 3, 8
TRIAL_PROCESS = "ray::ResourceTrainable"  # Ray's name for a trainable class given resources (sweeper.trial.checkpoints)
SPACE = f'''
from ray import tune

from sweeper import Sweep
from trainables.config import GANConfig

sweep = Sweep(
    name="resilient",
    config=GANConfig(data="toy-faces", loss="bce", resolution=32, g_width=8, d_width=8, batch_size=16,
                     steps_per_eval=10, num_evals={NUM_EVALS}, fid_samples=64, ref_samples=64,
                     final_fid_samples=64, eval_extractor="proxy"),
    space={{"g_lr": tune.loguniform(1e-4, 1e-3)}},
    num_samples={NUM_SAMPLES}, scheduler=None, max_concurrent=2,
)
'''


def _env():
    env = {**os.environ, "SWEEPER_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _fids(db: Path) -> int:
    return store_count(db, "select count(*) from metrics where key = 'fid'")


def _wait_for_fids(db: Path, n: int, sweep) -> None:
    deadline = time.monotonic() + 300
    while _fids(db) < n:
        assert sweep.poll() is None, sweep.communicate()
        assert time.monotonic() < deadline, f"fewer than {n} fids logged in 300 s"
        time.sleep(1)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("resume")
    (workdir / "space.py").write_text(SPACE)
    db = workdir / "sweeps" / "mlflow.db"
    with (workdir / "first.log").open("w") as log:
        sweep = subprocess.Popen([sys.executable, "-m", "sweeper", "run", "space.py"], cwd=workdir, env=_env(),
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # A trial process killed outright (as a lost spot instance or the OOM killer would).
            _wait_for_fids(db, 2, sweep)
            trials = [pid for pid, cmd in session(sweep.pid).items() if cmd.startswith(TRIAL_PROCESS)]
            assert trials, session(sweep.pid)
            os.kill(trials[0], signal.SIGKILL)
            # Then the driver with everything it started, as a crashed machine would.
            _wait_for_fids(db, _fids(db) + 4, sweep)
        finally:
            kill_session(sweep.pid)
            sweep.wait()
    killed_at = _fids(db)
    # Killed as the winner's version appears: inside its registration (tags, @best not yet done).
    _resume_killed_when(workdir, "resume1.log", lambda log: _model_versions(db) >= 1)
    # Killed after the registration (this driver's, or one it found recorded), while the parent
    # run's summary is written.
    _resume_killed_when(workdir, "resume2.log", lambda log: ("@best " in log or "registered before" in log)
                        and "registered" in _state(workdir).get("steps", {}))
    result = subprocess.run([sys.executable, "-m", "sweeper", "resume"], cwd=workdir, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result, killed_at, MlflowClient(f"sqlite:///{db}")


def _model_versions(db: Path) -> int:
    return store_count(db, "select count(*) from model_versions")


def _resume_killed_when(workdir: Path, log_name: str, condition) -> None:
    """`sweeper resume`, its whole session SIGKILLed as soon as `condition(its output so far)` holds."""
    log_path = workdir / log_name
    with log_path.open("w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "sweeper", "resume"], cwd=workdir, env=_env(),
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while not condition(log_path.read_text()):
                assert driver.poll() is None, f"{log_name}: the driver ended first\n" + log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"{log_name}: not killed in 600 s"
                time.sleep(0.05)
        finally:
            kill_session(driver.pid)
            driver.wait()
    assert _state(workdir)["status"] != "finished", f"{log_name}: the sweep finished before it was killed"


def _state(workdir: Path) -> dict:
    (state,) = workdir.glob("sweeps/ray_results/*/sweeper.json")
    return json.loads(state.read_text())


def _runs(client):
    runs = client.search_runs([client.get_experiment_by_name("resilient").experiment_id])
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def test_resume_finishes_the_same_sweep_in_the_same_runs(resumed):
    workdir, result, killed_at, client = resumed
    assert killed_at < NUM_SAMPLES * NUM_EVALS, "the sweep finished before it was killed: nothing was resumed"
    assert "resuming " in result.stdout and "best trial:" in result.stdout
    parents, children = _runs(client)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["sweeper.resumed_at"]
    assert len(children) == NUM_SAMPLES
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["sweeper.outcome"] == "completed"
        for key in ("fid", "kimg", "eval_period"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps == list(range(1, NUM_EVALS + 1)), (key, steps)  # in order, none twice, no gap
        grids = [a.path for a in client.list_artifacts(child.info.run_id, "grids")]
        assert len(grids) == NUM_EVALS
    assert client.get_model_version_by_alias("resilient-generator", "best").run_id in {c.info.run_id for c in children}
    (state,) = workdir.glob("sweeps/ray_results/*/sweeper.json")
    assert json.loads(state.read_text())["status"] == "finished"
    again = subprocess.run([sys.executable, "-m", "sweeper", "resume", "resilient"], cwd=workdir, env=_env(),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "finished; nothing to resume" in again.stdout, again.stdout + again.stderr


def test_a_resume_repeats_no_finished_step(resumed):
    """Killed inside the registration, then after it: one model version in the end, the final
    evaluation measured once, every final number logged once (trials' and parent's)."""
    workdir, result, _, client = resumed
    logs = {name: (workdir / name).read_text() for name in ("first.log", "resume1.log", "resume2.log")}
    logs["resume3"] = result.stdout
    measured = [name for name, text in logs.items() if "best checkpoints measured again" in text]
    assert measured == ["resume1.log"], measured
    assert all("not measured again" in logs[name] for name in ("resume2.log", "resume3"))
    # The second resume found the first one's registration unfinished (deleted it, registered
    # again) or, had the kill come after it was recorded, reused it; the third reused it.
    redone = "an unfinished registration, deleted" in logs["resume2.log"]
    assert redone != ("registered before the driver stopped" in logs["resume2.log"]), logs["resume2.log"][-3000:]
    assert "registered before the driver stopped" in logs["resume3"]
    (version,) = client.search_model_versions("name = 'resilient-generator'")
    assert client.get_model_version_by_alias("resilient-generator", "best").version == version.version
    registered = _state(workdir)["steps"]["registered"]
    assert (registered["model"], str(registered["model_version"])) == ("resilient-generator", str(version.version))
    assert f"registered model: models:/resilient-generator/{version.version};" in result.stdout
    parents, children = _runs(client)
    steps = _state(workdir)["steps"]
    for child in children:
        for key in ("fid_select", "fid_final"):
            history = client.get_metric_history(child.info.run_id, key)
            expected = steps["final_measured"].get(child.data.tags["sweeper.trial_id"], {}).get(key)
            assert [m.value for m in history] == pytest.approx([] if expected is None else [expected]), key
    assert version.run_id == child_run_of(children, registered["trial_id"])
    assert len(client.get_metric_history(parents[0].info.run_id, "fid_final")) == 1


def test_numbers_a_killed_step_logs_again_on_resume_stay_one_point_each(tmp_path):
    """The window test_a_resume_repeats_no_finished_step can only hit by chance: a driver killed after
    logging the final numbers and before recording that it did. The resume logs them again, with the
    timestamp the state recorded, and MLflow's store keeps one point per number."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("resumed")
    parent, child = (client.create_run(experiment).info.run_id for _ in range(2))
    (tmp_path / "experiment").mkdir()
    first = SweepState(str(tmp_path / "experiment"), "resumed", "space.py", True, "running", "2026-12-07T00:00:00",
                       client.tracking_uri, experiment, parent)
    resume.write_state(first, None)
    stamp = resume.logged_at(first)
    for driver in (first, resume.sweeps_in(str(tmp_path))[0]):  # the killed driver, then the resume
        assert resume.logged_at(driver) == stamp
        final._log_measured(client, child, 3, {"fid_final": 41.5, "final_eval_period": 3}, {}, {}, resume.logged_at(driver))
        client.log_metric(parent, "fid_final", 41.5, timestamp=resume.logged_at(driver))
    assert [(m.value, m.step, m.timestamp) for m in client.get_metric_history(child, "fid_final")] == [(41.5, 3, stamp)]
    assert [(m.value, m.timestamp) for m in client.get_metric_history(parent, "fid_final")] == [(41.5, stamp)]
    # Without the recorded timestamp a second log is a second point: what the state's record prevents.
    client.log_metric(parent, "fid_final", 41.5, timestamp=stamp + 1)
    assert len(client.get_metric_history(parent, "fid_final")) == 2


def child_run_of(children, trial_id: str) -> str:
    (child,) = [c for c in children if c.data.tags["sweeper.trial_id"] == trial_id]
    return child.info.run_id


def test_the_killed_trial_was_retried_from_its_checkpoint(resumed):
    """Tune's own record: the trial it counts a failure for restarted (iterations_since_restore 1)
    at an eval period past 1, and ran period 1 only once: it went on from a checkpoint."""
    workdir, _, _, client = resumed
    (experiment,) = workdir.glob("sweeps/ray_results/*/")
    state = json.loads(sorted(experiment.glob("experiment_state-*.json"))[-1].read_text())
    failures = {json.loads(trial)["trial_id"]: json.loads(runtime)["num_failures"]
                for trial, runtime in state["trial_data"]}
    failed = [trial_id for trial_id, n in failures.items() if n >= 1]
    assert failed, failures
    for trial_id in failed:
        rows = pd.read_csv(experiment / trial_id / "progress.csv")
        assert (rows["eval_period"] == 1).sum() == 1, rows[["eval_period", "iterations_since_restore"]]
        assert ((rows["iterations_since_restore"] == 1) & (rows["eval_period"] > 1)).any()
        # And its MLflow run: every period once, though one may have run twice around the kill.
        (child,) = [c for c in _runs(client)[1] if c.data.tags["sweeper.trial_id"] == trial_id]
        assert [m.step for m in client.get_metric_history(child.info.run_id, "fid")] == list(range(1, NUM_EVALS + 1))


@pytest.mark.parametrize("left, expected", [(["checkpoint_000001", "checkpoint_000003"], "checkpoint_000003"),
                                            ([], None)])
def test_a_restarted_trial_whose_checkpoint_tune_deleted_takes_the_newest_left(tmp_path, left, expected):
    """Tune deletes a checkpoint as the next one registers and saves its state later: a driver
    killed in between names a checkpoint that is gone (CI saw a trial fail on it three times)."""
    from ray import tune

    from sweeper.trial.checkpoints import surviving_checkpoint

    for name in left + ["not_a_checkpoint"]:
        (tmp_path / name).mkdir()
    named = tune.Checkpoint.from_directory(tmp_path / "checkpoint_000002")
    found = surviving_checkpoint(named)
    assert (found and Path(found.path).name) == expected
    (tmp_path / "checkpoint_000002").mkdir()
    assert surviving_checkpoint(named).path == named.path


def _deletes_its_latest_checkpoint_then_dies_once(config):
    """Periods 1 and 2 checkpointed; then, on the first attempt, checkpoint 2 deleted (as Tune
    deletes one a killed driver's state still names) and the process dies."""
    import os
    import shutil
    import tempfile

    from ray import tune

    checkpoint = tune.get_checkpoint()
    start = 1
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = int(Path(folder, "period").read_text()) + 1
    for period in range(start, 4):
        folder = tempfile.mkdtemp()
        Path(folder, "period").write_text(str(period))
        tune.report({"period": period, "resumed_at": start}, checkpoint=tune.Checkpoint.from_directory(folder))
        if period == 2 and checkpoint is None:
            [named] = Path(config["storage"]).glob("deleted/*/checkpoint_000001")
            shutil.rmtree(named)
            os._exit(1)


def test_tune_restoring_a_trial_from_a_deleted_checkpoint_restores_it_from_the_newest_left(tmp_path):
    """Ray's own `Trainable.restore` refuses a checkpoint that is gone, before the trial's function
    runs: the trainable class sweeper runs chooses the newest one left first."""
    import ray
    from ray import tune

    from sweeper.trial.checkpoints import resuming_from_what_survives

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    ray.init(num_cpus=1, include_dashboard=False, address="local")
    try:
        tuner = tune.Tuner(resuming_from_what_survives(_deletes_its_latest_checkpoint_then_dies_once),
                           param_space={"storage": str(tmp_path)},
                           run_config=tune.RunConfig(storage_path=str(tmp_path), name="deleted",
                                                     failure_config=tune.FailureConfig(max_failures=1)))
        result = tuner.fit()[0]
    finally:
        ray.shutdown()
    assert result.error is None, result.error
    assert result.metrics["period"] == 3 and result.metrics["resumed_at"] == 2  # from checkpoint_000000 (period 1)
