"""What promotion decided, as MLflow gets it (sweeper.tracking.rungs): each record's decision and
its rung's cutoff, and the rank correlation between consecutive rungs, on a state built by hand."""
import json
import math

import pytest
from mlflow.tracking import MlflowClient

from sweeper.tracking.rungs import COMPLETED, PROMOTED, STOPPED, decisions, log_rungs, rank_correlations

# One bracket, rungs 2, 6, 18: five trials at rung 2 (a, b promoted), b at rung 6 (promoted), b at 18.
STATE = {"rungs": [2, 6, 18], "eta": 3, "mode": "min",
         "records": [[{"a": 3.0, "b": 1.0, "c": 5.0, "d": 4.0, "e": 2.5}, {"b": 0.8, "a": 2.3, "e": 2.2}, {"b": 0.5}]],
         "promoted": [[["a", "b"], ["b"], []]]}


def test_each_record_has_its_decision_and_the_worst_value_promoted_from_its_rung():
    rows = {(r["trial_id"], r["rung"]): (r["decision"], r["cutoff"]) for r in decisions(STATE)}
    assert rows[("a", 2)] == (PROMOTED, 3.0) and rows[("b", 2)] == (PROMOTED, 3.0)
    assert rows[("c", 2)] == (STOPPED, 3.0) and rows[("e", 2)] == (STOPPED, 3.0)
    assert rows[("b", 6)] == (PROMOTED, 0.8) and rows[("a", 6)] == (STOPPED, 0.8)
    assert rows[("b", 18)] == (COMPLETED, None)
    # Maximising, the cutoff is the lowest value promoted.
    maximising = {**STATE, "mode": "max"}
    assert {r["cutoff"] for r in decisions(maximising) if r["rung"] == 2} == {1.0}


def test_rank_correlation_of_consecutive_rungs_over_the_trials_at_both():
    # a, b, e at rungs 2 and 6: ranks (3, 1, 2) and (3, 1, 2): rho 1. Rung 6 to 18: one trial, none.
    assert rank_correlations(STATE) == {"rank_corr.2_6": pytest.approx(1.0)}
    reversed_ = {**STATE, "records": [[STATE["records"][0][0], {"b": 3.0, "a": 1.0, "e": 2.0}, {}]]}
    assert rank_correlations(reversed_) == {"rank_corr.2_6": pytest.approx(-1.0)}
    assert not math.isnan(rank_correlations(STATE)["rank_corr.2_6"])


def test_each_record_carries_its_bracket_and_value_and_minimising_is_the_default():
    rows = decisions(STATE)
    assert {(r["trial_id"], r["rung"]): (r["bracket"], r["value"]) for r in rows}[("e", 6)] == (0, 2.2)
    assert [r["bracket"] for r in decisions({**STATE, "records": [[{}, {}, {}], *STATE["records"]],
                                            "promoted": [[[], [], []], *STATE["promoted"]]})] == [1] * len(rows)
    unmarked = {k: v for k, v in STATE.items() if k != "mode"}  # a state saved before `mode` was kept
    assert decisions(unmarked) == decisions(STATE)


def test_a_rung_that_promoted_nobody_and_the_last_rung_have_no_cutoff():
    nobody = {**STATE, "promoted": [[[], [], []]]}
    assert {r["cutoff"] for r in decisions(nobody)} == {None}
    # Even where the state lists a trial as promoted from the last rung, there is no rung above it.
    top = {**STATE, "promoted": [[["a", "b"], ["b"], ["b"]]]}
    assert [r["cutoff"] for r in decisions(top) if r["rung"] == 18] == [None]


def test_diverged_or_missing_values_neither_set_a_cutoff_nor_enter_a_correlation():
    # b promoted from rung 2 with an infinite (diverged) value, d's value missing: neither counts.
    state = {**STATE, "records": [[{**STATE["records"][0][0], "b": math.inf, "d": None},
                                   STATE["records"][0][1], STATE["records"][0][2]]]}
    assert {r["cutoff"] for r in decisions(state) if r["rung"] == 2} == {3.0}
    assert rank_correlations(state) == {}  # a and e alone are finite at both rungs: fewer than 3


def test_the_correlation_between_the_last_two_rungs_is_measured_too():
    three = {**STATE, "records": [[STATE["records"][0][0], {"b": 0.8, "a": 2.3, "e": 2.2},
                                   {"b": 0.5, "a": 2.0, "e": 2.1}]], "promoted": [[["a", "b", "e"], ["a", "b", "e"], []]]}
    assert rank_correlations(three) == {"rank_corr.2_6": pytest.approx(1.0), "rank_corr.6_18": pytest.approx(0.5)}


# Rungs 1, 3, 9. Bracket 0: t1..t5 at rung 1 (t1, t2, t4 promoted: cutoff 231.44), the three at rung 3
# (all promoted: cutoff 150) and at 9. Bracket 1: u1 at rung 3 alone, promoted nowhere (no cutoff).
LOGGED = {"rungs": [1, 3, 9], "eta": 3, "mode": "min",
          "records": [[{"t1": 231.44, "t2": 118.2, "t3": 240.06, "t4": 97.5, "t5": 310.0},
                       {"t1": 150.0, "t2": 90.25, "t4": 60.5}, {"t1": 40.0, "t2": 70.0, "t4": 41.5}],
                      [{}, {"u1": 80.0}, {}]],
          "promoted": [[["t1", "t2", "t4"], ["t1", "t2", "t4"], []], [[], [], []]]}


def test_log_rungs_tags_each_trials_run_and_logs_the_records_and_correlations_on_the_parent(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("rungs", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    runs = {t: client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
            for t in ("t1", "t2", "t3", "t4", "u1")}  # t5 has no run (not found): it gets no tag, and no error
    lines = log_rungs(client, parent, runs, LOGGED)

    tags = {t: client.get_run(run_id).data.tags.get("sweeper.rungs") for t, run_id in runs.items()}
    assert tags == {"t1": "1: 231.4 (cutoff 231.4) promoted; 3: 150 (cutoff 150) promoted; 9: 40 completed",
                    "t2": "1: 118.2 (cutoff 231.4) promoted; 3: 90.25 (cutoff 150) promoted; 9: 70 completed",
                    "t3": "1: 240.1 (cutoff 231.4) stopped",
                    "t4": "1: 97.5 (cutoff 231.4) promoted; 3: 60.5 (cutoff 150) promoted; 9: 41.5 completed",
                    "u1": "3: 80 stopped"}
    assert "sweeper.rungs" not in client.get_run(parent).data.tags

    with open(client.download_artifacts(parent, "rungs.json", str(tmp_path / "download"))) as f:
        text = f.read()
    keys = ("trial_id", "bracket", "rung", "value", "cutoff", "decision")
    rows = [("t1", 0, 1, 231.44, 231.44, PROMOTED), ("t2", 0, 1, 118.2, 231.44, PROMOTED),
            ("t3", 0, 1, 240.06, 231.44, STOPPED), ("t4", 0, 1, 97.5, 231.44, PROMOTED),
            ("t5", 0, 1, 310.0, 231.44, STOPPED), ("t1", 0, 3, 150.0, 150.0, PROMOTED),
            ("t2", 0, 3, 90.25, 150.0, PROMOTED), ("t4", 0, 3, 60.5, 150.0, PROMOTED),
            ("t1", 0, 9, 40.0, None, COMPLETED), ("t2", 0, 9, 70.0, None, COMPLETED),
            ("t4", 0, 9, 41.5, None, COMPLETED), ("u1", 1, 3, 80.0, None, STOPPED)]
    assert json.loads(text) == {"rungs": [1, 3, 9], "eta": 3, "decisions": [dict(zip(keys, r)) for r in rows]}
    assert text.startswith('{\n "rungs": [\n  1,\n')  # indented one space a level, for reading by eye

    # Rung 1 to 3 over t1, t2, t4: ranks (3, 2, 1) and (3, 2, 1), rho 1. Rung 3 to 9: ranks (3, 2, 1) and
    # (1, 3, 2): squared rank differences 4 + 1 + 1, rho = 1 - 6 * 6 / (3 * 8) = -0.5.
    assert client.get_run(parent).data.metrics == {"rank_corr.1_3": pytest.approx(1.0),
                                                   "rank_corr.3_9": pytest.approx(-0.5)}
    assert lines == ["rungs: 5 at 1, 4 at 3, 3 at 9 eval periods",
                     "rank correlation between rungs (did early rank predict later?): 1->3 +1.00, 3->9 -0.50"]
