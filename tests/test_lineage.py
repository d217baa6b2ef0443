"""A PBT sweep's lineage read back from a real MLflow sqlite store: the table, the winner's chain,
the parent run's lineage.parquet and lineage.png, and schedule.json.

The population, written by hand as the PBT trial code writes it, 3 members over 6 eval periods:
  A: one run (a0), no generation tag (as a non-PBT trial's run), periods 1..6.
  B: b0 periods 1..2; b1 cloned from A (a0) at 2, periods 3..6.
  C: c0 periods 1..4; c1 cloned from B (b1) at 4, periods 5..6: a chain of two exploits.
"""
import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from sweeper.tracking.lineage import (
    CLONED_AT_TAG,
    CLONED_FROM_RUN_TAG,
    CLONED_FROM_TRIAL_TAG,
    GENERATION_TAG,
    BrokenLineage,
    chain_to,
    lineage_table,
    log_lineage,
    schedule_json,
)
from sweeper.tracking.runs import PARENT_TAG, STEP_METRIC, TRIAL_TAG, Tracking

KEYS = ["g_lr", "d_lr", "n_critic", "gp_weight", "loss"]
# name: (trial, generation tag, donor name, cloned_at, params, fid by period)
POPULATION = {
    "a0": ("A", None, None, None, {"g_lr": "0.0002", "d_lr": "0.0002", "n_critic": "5", "gp_weight": "10.0"},
           {1: 300.0, 2: 250.0, 3: 220.0, 4: 200.0, 5: 190.0, 6: 185.0}),
    "b0": ("B", "0", None, None, {"g_lr": "0.0001", "d_lr": "0.0003", "n_critic": "5", "gp_weight": "10.0"},
           {1: 320.0, 2: 290.0}),
    "b1": ("B", "1", "a0", 2, {"g_lr": "0.00024", "d_lr": "0.00016", "n_critic": "4", "gp_weight": "10.0"},
           {3: 230.0, 4: 205.0, 5: 180.0, 6: 170.0}),
    "c0": ("C", "0", None, None, {"g_lr": "5e-05", "d_lr": "0.0001", "n_critic": "3", "gp_weight": "5.0"},
           {1: 310.0, 2: 280.0, 3: 260.0, 4: 250.0}),
    "c1": ("C", "1", "b1", 4, {"g_lr": "0.000288", "d_lr": "0.000128", "n_critic": "5", "gp_weight": "12.5"},
           {5: 175.0, 6: float("nan")}),  # a diverged last period: last is NaN, best is the finite one
}
COMMON_PARAMS = {"loss": "wgan-gp", "batch_size": "64"}


@pytest.fixture()
def sweep(tmp_path):
    """(Tracking, name -> run id) of the population above, beside a second sweep's run that must not count."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("pbt", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    ids = {}
    for name, (trial, generation, donor, cloned_at, params, fid) in POPULATION.items():
        tags = {PARENT_TAG: parent, TRIAL_TAG: trial}
        if generation is not None:
            tags[GENERATION_TAG] = generation
        if donor:
            tags.update({CLONED_FROM_RUN_TAG: ids[donor], CLONED_FROM_TRIAL_TAG: POPULATION[donor][0],
                         CLONED_AT_TAG: str(cloned_at)})
        ids[name] = run = client.create_run(experiment, tags=tags).info.run_id
        for key, value in {**params, **COMMON_PARAMS}.items():
            client.log_param(run, key, value)
        for period, value in fid.items():
            client.log_metric(run, "fid", value, step=period)
            client.log_metric(run, STEP_METRIC, period, step=period)
    other_parent = client.create_run(experiment).info.run_id
    client.create_run(experiment, tags={PARENT_TAG: other_parent, TRIAL_TAG: "Z"})
    return Tracking(client.tracking_uri, experiment, parent), ids


def values_of(name: str) -> dict:
    """The key params of a run, typed by hand: the columns' types are the same across all runs."""
    p = POPULATION[name][4]
    return {"g_lr": float(p["g_lr"]), "d_lr": float(p["d_lr"]), "n_critic": int(p["n_critic"]),
            "gp_weight": float(p["gp_weight"]), "loss": "wgan-gp"}


def winner_chain(ids: dict) -> list[dict]:
    """c1's checkpoint at period 6, worked by hand: A trained 1..2, B's clone of it 3..4, C's clone of that 5..6."""
    return [
        {"trial_id": "A", "run_id": ids["a0"], "generation": 0, "from_period": 1, "to_period": 2, "values": values_of("a0")},
        {"trial_id": "B", "run_id": ids["b1"], "generation": 1, "from_period": 3, "to_period": 4, "values": values_of("b1")},
        {"trial_id": "C", "run_id": ids["c1"], "generation": 1, "from_period": 5, "to_period": 6, "values": values_of("c1")},
    ]


def test_table_has_a_row_per_run_with_its_lineage_metric_and_typed_params(sweep):
    tracking, ids = sweep
    table = lineage_table(tracking, KEYS, "fid")
    nan = float("nan")
    expected = pd.DataFrame({
        "trial_id": ["A", "B", "B", "C", "C"],
        "generation": [0, 0, 1, 0, 1],
        "run_id": [ids[n] for n in ("a0", "b0", "b1", "c0", "c1")],
        "cloned_from_trial": [None, None, "A", None, "B"],
        "cloned_from_run": [None, None, ids["a0"], None, ids["b1"]],
        "cloned_at": pd.array([None, None, 2, None, 4], dtype="Int64"),
        "first_period": pd.array([1, 1, 3, 1, 5], dtype="Int64"),
        "last_period": pd.array([6, 2, 6, 4, 6], dtype="Int64"),
        "last_fid": [185.0, 290.0, 170.0, 250.0, nan],
        "best_fid": [185.0, 290.0, 170.0, 250.0, 175.0],
        "g_lr": [2e-4, 1e-4, 2.4e-4, 5e-5, 2.88e-4],
        "d_lr": [2e-4, 3e-4, 1.6e-4, 1e-4, 1.28e-4],
        "n_critic": pd.array([5, 5, 4, 3, 5], dtype="Int64"),
        "gp_weight": [10.0, 10.0, 10.0, 5.0, 12.5],
        "loss": ["wgan-gp"] * 5,
    })
    assert list(table.columns) == list(expected.columns)
    for column in expected:
        assert table[column].tolist() == pytest.approx(expected[column].tolist(), nan_ok=True) \
            if table[column].dtype == "float64" else table[column].tolist() == expected[column].tolist(), column
    assert str(table["n_critic"].dtype) == "Int64" and table["g_lr"].dtype == "float64"
    assert lineage_table(tracking, KEYS, "fid", mode="max")["best_fid"].tolist()[:4] == [300.0, 320.0, 230.0, 310.0]


def test_chain_walks_back_through_two_exploits(sweep):
    tracking, ids = sweep
    table = lineage_table(tracking, KEYS, "fid")
    assert chain_to(table, ids["c1"], 6) == winner_chain(ids)
    # An earlier checkpoint of b1 holds A's first two periods and b1's third only.
    assert [(s["run_id"], s["from_period"], s["to_period"]) for s in chain_to(table, ids["b1"], 3)] == [
        (ids["a0"], 1, 2), (ids["b1"], 3, 3)]
    assert chain_to(table, ids["c0"], 4) == [{"trial_id": "C", "run_id": ids["c0"], "generation": 0,
                                             "from_period": 1, "to_period": 4, "values": values_of("c0")}]


def test_a_broken_link_or_impossible_period_is_an_error_naming_the_run(sweep):
    tracking, ids = sweep
    table = lineage_table(tracking, KEYS, "fid")
    table.loc[table["run_id"] == ids["b1"], "cloned_from_run"] = "deadbeef"
    with pytest.raises(BrokenLineage, match=f"{ids['b1']}.*deadbeef"):
        chain_to(table, ids["c1"], 6)
    with pytest.raises(BrokenLineage, match="nosuchrun"):
        chain_to(table, "nosuchrun", 6)
    with pytest.raises(BrokenLineage, match=f"{ids['c1']}.*period 4"):
        chain_to(lineage_table(tracking, KEYS, "fid"), ids["c1"], 4)  # c1 began at period 5


def test_log_lineage_writes_the_table_and_a_figure_on_the_parent_run(sweep, tmp_path):
    tracking, ids = sweep
    assert log_lineage(tracking, KEYS, "fid", ids["c1"], 6) == winner_chain(ids)
    client = tracking.client()
    assert {a.path for a in client.list_artifacts(tracking.parent_run_id)} == {"lineage.parquet", "lineage.png"}
    written = pd.read_parquet(client.download_artifacts(tracking.parent_run_id, "lineage.parquet", str(tmp_path)))
    expected = lineage_table(tracking, KEYS, "fid")
    expected["on_winner_path"] = [True, False, True, False, True]  # a0, b0, b1, c0, c1
    pd.testing.assert_frame_equal(written, expected)

    image = Image.open(client.download_artifacts(tracking.parent_run_id, "lineage.png", str(tmp_path)))
    image.load()
    assert 800 <= image.width <= 2000 and 500 <= image.height <= 2000
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels // 32, axis=0, return_counts=True)  # coarse: anti-aliasing aside
    drawn = colours[counts > 100]
    assert len(drawn) >= 6, drawn  # white, black, grey and the three members' colours at least
    assert (pixels.min(axis=1) < 200).mean() > 0.01  # more than a frame on white


def test_a_broken_chain_leaves_the_table_and_returns_no_chain(sweep, tmp_path, caplog):
    tracking, ids = sweep
    tracking.client().delete_run(ids["a0"])  # the donor of b1 is gone from the sweep
    assert log_lineage(tracking, KEYS, "fid", ids["c1"], 6) == []
    assert "lineage chain left out" in caplog.text and ids["b1"] in caplog.text
    written = pd.read_parquet(tracking.client().download_artifacts(
        tracking.parent_run_id, "lineage.parquet", str(tmp_path)))
    assert len(written) == 4 and not written["on_winner_path"].any()


def test_schedule_json_round_trips_and_says_what_to_retrain_with(sweep):
    tracking, ids = sweep
    chain = chain_to(lineage_table(tracking, KEYS, "fid"), ids["c1"], 6)
    base = {"g_lr": np.float64(2e-4), "n_critic": np.int64(5), "betas": (0.0, 0.9), "loss": "wgan-gp"}
    schedule = schedule_json(chain, base, steps_per_eval=np.int64(100))
    assert json.loads(json.dumps(schedule)) == {
        "base_config": {"g_lr": 2e-4, "n_critic": 5, "betas": [0.0, 0.9], "loss": "wgan-gp"},
        "steps_per_eval": 100,
        "segments": [{"from_period": s["from_period"], "to_period": s["to_period"], "trial_id": s["trial_id"],
                      "run_id": s["run_id"], "generation": s["generation"], "values": s["values"]}
                     for s in winner_chain(ids)]}
