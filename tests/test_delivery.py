"""Exactly-once delivery's parts, on a real MLflow sqlite store: the private spool (a planted symlink,
FIFO or another user's file is never delivered), a trial's child run that always carries its
params, and the driver's delivery of what an ended trial left in its spool and checkpoint."""
import json
import os
import stat
import tempfile

import pytest
from ray import tune

from sweeper.tracking.runs import PARENT_TAG, TRIAL_TAG, open_sweep, trial_run_id
from sweeper.trial.delivery import SPOOL_IN_CHECKPOINT, RunLog, SpoolError, spool_root, trial_spool
from sweeper.trial.leftovers import deliver_trial_leftovers

OTHER_UID = 65534  # "nobody": a file of another user
as_root = pytest.mark.skipif(os.getuid() != 0, reason="making a file of another user needs root")


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # open_sweep's local artifact root
    return open_sweep("delivery", f"sqlite:///{tmp_path / 'mlflow.db'}", params={"sweep": 1}, tags={},
                      child_params={"extractor": "proxy"}, child_tags={"sweeper.kind": "Toy"})


def _child(tracking, trial_id="t0001"):
    return trial_run_id(tracking, trial_id, f"trial_{trial_id}", {"x": 1.5})


def _steps(tracking, run_id, key):
    return sorted(m.step for m in tracking.client().get_metric_history(run_id, key))


def _spool_file(folder, step, loss):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{step:06d}.json").write_text(json.dumps({"eval_period": step, "loss": loss}))


# -- a child run carries its params from the moment it is found --------------------------------------

def test_a_run_a_crashed_attempt_left_without_params_gets_them_when_the_trial_finds_it(tracking):
    client = tracking.client()
    # What a first attempt leaves when it dies between MLflow's two calls (create the run, log params).
    orphan = client.create_run(tracking.experiment_id, run_name="trial_t0001",
                               tags={PARENT_TAG: tracking.parent_run_id, TRIAL_TAG: "t0001"})
    assert client.get_run(orphan.info.run_id).data.params == {}
    assert _child(tracking) == orphan.info.run_id
    assert client.get_run(orphan.info.run_id).data.params == {"x": "1.5", "extractor": "proxy"}


def test_a_run_with_part_of_its_params_gets_the_rest_and_keeps_what_it_has(tracking):
    client = tracking.client()
    run_id = client.create_run(tracking.experiment_id, tags={PARENT_TAG: tracking.parent_run_id,
                                                             TRIAL_TAG: "t0001"}).info.run_id
    client.log_param(run_id, "x", "1.5")
    assert _child(tracking) == run_id
    assert _child(tracking) == run_id  # a third lookup: nothing to log, no error
    assert client.get_run(run_id).data.params == {"x": "1.5", "extractor": "proxy"}
    assert len(client.search_runs([tracking.experiment_id], f"tags.`{TRIAL_TAG}` = 't0001'")) == 1


# -- the spool is private -----------------------------------------------------------------------------

def test_the_spool_root_is_this_users_and_mode_700_under_any_umask(tmp_path):
    old = os.umask(0)
    try:
        root = spool_root(tmp_path)
    finally:
        os.umask(old)
    info = os.lstat(root)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    assert trial_spool("exp", "t1", tmp_path) == root / "exp" / "t1"


def test_a_spool_root_others_could_write_into_is_made_anew(tmp_path):
    root = tmp_path / f"sweeper-spool-{os.getuid()}"
    (root / "exp" / "t1").mkdir(parents=True)
    _spool_file(root / "exp" / "t1", 7, 0.0)  # planted while it was open to all
    root.chmod(0o777)
    assert spool_root(tmp_path) == root
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700 and list(root.iterdir()) == []


def test_a_spool_root_that_is_a_symlink_is_refused_and_its_target_left_alone(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (tmp_path / f"sweeper-spool-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(SpoolError, match="not a folder"):
        spool_root(tmp_path)
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755


@as_root
def test_a_spool_root_of_another_user_is_refused(tmp_path):
    root = tmp_path / f"sweeper-spool-{os.getuid()}"
    root.mkdir(mode=0o700)
    os.chown(root, OTHER_UID, OTHER_UID)
    with pytest.raises(SpoolError, match=f"owned by uid {OTHER_UID}"):
        spool_root(tmp_path)
    assert os.lstat(root).st_uid == OTHER_UID


def test_planted_spool_entries_are_not_delivered_and_do_not_hide_the_steps_after_them(tracking, tmp_path):
    run_id = _child(tracking)
    spool = trial_spool("exp", "t0001", tmp_path)
    run_log = RunLog(tracking, run_id, spool)
    run_log.log({"eval_period": 1, "loss": 1.0})
    target = tmp_path / "forged.json"
    target.write_text(json.dumps({"eval_period": 2, "loss": 666.0}))
    (spool / "000002.json").symlink_to(target)
    os.mkfifo(spool / "000003.json")  # would block a plain open()
    (spool / "notastep.json").write_text("{}")
    if os.getuid() == 0:
        _spool_file(spool, 4, 666.0)
        os.chown(spool / "000004.json", OTHER_UID, OTHER_UID)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    run_log.keep_pending_in(checkpoint)  # a planted entry does not travel into a checkpoint either
    assert not (checkpoint / SPOOL_IN_CHECKPOINT / "000002.json").exists()
    run_log.log({"eval_period": 5, "loss": 0.5})
    assert _steps(tracking, run_id, "loss") == [1, 5] == _steps(tracking, run_id, "eval_period")
    assert [m.value for m in tracking.client().get_metric_history(run_id, "loss")] == [1.0, 0.5]
    assert sorted(p.name for p in spool.iterdir()) == ["notastep.json"]  # the planted steps dropped
    assert json.loads(target.read_text())["loss"] == 666.0  # a symlink's target is never touched


# -- the driver delivers what an ended trial left -----------------------------------------------------

def test_the_driver_delivers_a_stopped_trials_spool_and_checkpoint_exactly_once(tracking, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where trial_spool puts the private root
    # What the task sets in its worker, set here so that this process's environment is restored after.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    run_id = _child(tracking)
    RunLog(tracking, run_id, trial_spool("exp", "t0001")).log({"eval_period": 1, "loss": 1.0})
    # Then MLflow went down: the checkpoint of period 3 carries periods 2 and 3; the trial spooled
    # period 4 too and was stopped inside tune.report.
    checkpoint = tmp_path / "checkpoint_000002"
    for step in (2, 3):
        _spool_file(checkpoint / SPOOL_IN_CHECKPOINT, step, 1.0 / step)
    for step in (3, 4):
        _spool_file(trial_spool("exp", "t0001"), step, 1.0 / step)
    carried = tune.Checkpoint.from_directory(str(checkpoint))

    assert deliver_trial_leftovers(tracking, run_id, "exp", "t0001", carried, 30.0) == (3, 0, "")
    for key in ("loss", "eval_period"):
        assert _steps(tracking, run_id, key) == [1, 2, 3, 4]
    assert {m.step: m.value for m in tracking.client().get_metric_history(run_id, "loss")} == \
        {1: 1.0, 2: 0.5, 3: pytest.approx(1 / 3), 4: 0.25}
    assert not trial_spool("exp", "t0001").exists()
    # Again (a resumed sweep's end): the checkpoint still carries 2 and 3; nothing is sent twice.
    assert deliver_trial_leftovers(tracking, run_id, "exp", "t0001", carried, 30.0) == (0, 0, "")
    assert _steps(tracking, run_id, "loss") == [1, 2, 3, 4]
