"""What promotion decided, as MLflow gets it (sweeper.tracking.rungs): each record's decision and
its rung's cutoff, and the rank correlation between consecutive rungs, on a state built by hand."""
import math

import pytest

from sweeper.tracking.rungs import COMPLETED, PROMOTED, STOPPED, decisions, rank_correlations

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
