"""The final evaluation: candidates, re-measurement as real Ray tasks on real checkpoints, the
winner picked on one draw (`fid_select`) and reported on an independent one (`fid_final`: other z,
the other half of the real images), not by the noisy per-eval minimum; the gain over the baseline."""
import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune

from sweeper.definition import Sweep
from sweeper.driver import final
from sweeper.kinds.base import Kind
from sweeper.kinds.classifier import CLASSIFIER
from sweeper.kinds.gan import GAN
from sweeper.kinds.refstats import REPORT, SELECT, half_indices, reference_stats, refstats_key
from sweeper.tracking.outcomes import baseline_gain
from trainables.config import GANConfig
from trainables.data import toy_faces
from trainables.metrics import RandomConvFeatures
from trainables.training.checkpoint import load_generator
from trainables.training.evaluate import fid_kid_of, generated_batches
from trainables.training.gan import train_gan

CFG = GANConfig(resolution=32, z_dim=16, g_width=16, d_width=16, batch_size=32, steps_per_eval=1, num_evals=1,
                fid_samples=64, ref_samples=512, final_fid_samples=256, loss="bce", device="cpu")


def _table(rows):
    return pd.DataFrame([{"trial_id": t, "outcome": o, "warm_start": w, "group": "warm-start" if w else "searched",
                          "best_fid": f} for t, o, w, f in rows])


def test_candidates_are_the_top_k_of_each_group():
    table = _table([("a", "completed", False, 30.0), ("b", "stopped-early", False, 10.0),
                    ("c", "completed", False, 20.0), ("d", "error", False, 1.0),
                    ("e", "completed", True, 50.0), ("f", "completed", True, 40.0),
                    ("g", "diverged", False, math.inf)])
    assert final.candidates(table, "fid", "min", top_k=2) == ["b", "c", "f", "e"]  # groups in name order
    assert final.candidates(table, "fid", "min", top_k=1) == ["b", "f"]
    assert final.candidates(table, "acc", "max", top_k=1) == []  # no such metric: nothing to measure


def test_gain_over_the_baseline_can_be_negative():
    table = _table([("a", "completed", False, 1.0), ("w", "completed", True, 9.0)])
    table["fid_final"] = [40.0, 30.0]  # the hand-tuned trial re-measures better than the searched one
    assert baseline_gain(table, "fid_final", "min") == (30.0, -10.0)
    table["fid_final"] = [25.0, 30.0]
    assert baseline_gain(table, "fid_final", "min") == (30.0, 5.0)
    table["warm_start"] = [False, False]
    assert baseline_gain(table, "fid_final", "min") == (None, None)


def test_the_best_of_each_group_by_the_selection_number():
    groups = {"a": "searched", "b": "searched", "c": "searched", "w": "warm-start", "x": "warm-start"}
    values = {"a": 30.0, "b": 10.0, "c": 10.0, "w": math.nan, "x": 50.0}
    assert final.best_of_each_group(values, groups, "min") == ["b", "x"]  # first of equals; NaN never
    assert final.best_of_each_group(values, groups, "max") == ["a", "x"]


def test_the_classifier_picks_on_validation_and_test_acc_only_reports():
    # No selection draw: every candidate is tested once, and the winner is the best by validation
    # accuracy among the tested, whatever their test accuracy says.
    assert Kind.select_metric is None and CLASSIFIER.select_metric is None and GAN.select_metric == "fid_select"
    table = pd.DataFrame({"trial_id": ["a", "b", "c"], "outcome": ["completed"] * 3,
                          "best_val_acc": [0.90, 0.80, 0.95], "test_acc": [0.70, 0.99, math.nan]})
    assert final.winner(table, *CLASSIFIER.winner_by(None), measured=CLASSIFIER.final_metric) == "a"


def test_the_real_images_split_into_two_disjoint_halves_each_cached_apart():
    faces = toy_faces(101, 32, seed=0)
    extractor = RandomConvFeatures(seed=0)
    select = reference_stats(faces.images, faces.fingerprint, extractor, 1000, half=SELECT)
    report = reference_stats(faces.images, faces.fingerprint, extractor, 1000, half=REPORT)
    whole = reference_stats(faces.images, faces.fingerprint, extractor, 1000)
    # Every image in exactly one half (50 + 51 of 101), each statistics from its own half's pixels.
    assert (len(select.indices), len(report.indices)) == (50, 51)
    assert not set(select.indices) & set(report.indices)
    assert sorted({*select.indices, *report.indices}) == list(range(101)) == list(whole.indices)
    assert not np.allclose(select.mu, report.mu)
    own = reference_stats(faces.images[select.indices], "select-half-alone", extractor, 1000)
    np.testing.assert_allclose(select.mu, own.mu, rtol=1e-6)
    # Three cache entries; the whole set's key is what it was before halves existed.
    assert len({select.key, report.key, whole.key}) == 3
    assert whole.key == refstats_key(faces.fingerprint, (32, 32), extractor.name, 101, 0)
    again = reference_stats(faces.images, faces.fingerprint, extractor, 1000, half=REPORT)
    assert again.cache_hit and list(again.indices) == list(report.indices)
    # A subset of a half stays in it; a set too small to split gives both halves every image.
    subset = reference_stats(faces.images, faces.fingerprint, extractor, 20, half=REPORT, seed=3)
    assert len(subset.indices) == 20 and set(subset.indices) <= set(report.indices)
    assert list(half_indices(3, SELECT)) == list(half_indices(3, REPORT)) == [0, 1, 2]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    yield
    ray.shutdown()


def test_gan_inputs_select_on_one_half_of_the_real_images_and_report_on_the_other(ray_local):
    # The sweep's own inputs, reference passes in Ray tasks: the per-eval proxy and fid_select on
    # the SELECT half, fid_final (standard extractor) on the REPORT half; 8 images each keeps the
    # standard extractor's passes short on a CPU.
    sweep = Sweep("halves", CFG.replace(ref_samples=8, final_fid_samples=16, eval_extractor="proxy"))
    prepared = SimpleNamespace(data=toy_faces(40, 32, seed=1), key="toy-40")
    inputs = GAN.inputs(sweep, prepared, available={"CPU": 2})
    per_eval, select, report = inputs.trial["ref_stats"], inputs.final["select_stats"], inputs.final["final_stats"]
    assert (per_eval.half, select.half, report.half) == (SELECT, SELECT, REPORT)
    # fid_select is the per-eval FID measured again: the proxy's statistics, the very same pass.
    assert select is per_eval and inputs.final["select_extractor"] == inputs.trial["extractor"] == per_eval.extractor_name
    assert report.extractor_name == inputs.final["final_extractor"] == "inception-v3-compat"
    chosen_on = set(per_eval.indices) | set(select.indices)
    assert len(report.indices) == 8 and not chosen_on & set(report.indices)
    assert chosen_on <= set(half_indices(40, SELECT)) and set(report.indices) <= set(half_indices(40, REPORT))
    assert inputs.footing["sweeper.ref_samples"] == 8 and inputs.footing["sweeper.fid_final_draw"]
    assert inputs.measured_on.startswith(f"{report.extractor_name}, 16 generated vs 8 real images; ")
    assert ("fid_select (random-conv-v1-seed0, the per-eval extractor) on an independent draw: 16 generated with "
            "other z vs 8 other real images") in inputs.measured_on


def _checkpoint(cfg, images, extractor, ref, root, name):
    kept = []

    def report(metrics, directory):
        shutil.copytree(directory, root / name, dirs_exist_ok=True)
        kept.append(tune.Checkpoint.from_directory(str(root / name)))

    train_gan(cfg, report, images=images, extractor=extractor, ref_stats=ref)
    return kept[-1]


def _halves(data, extractor, n=CFG.ref_samples):
    return {half: reference_stats(data.images, data.fingerprint, extractor, n, half=half) for half in (SELECT, REPORT)}


def _shared(extractor, stats, select_extractor=None, select_stats=None) -> dict:
    """The final evaluation's inputs as GAN.inputs makes them; fid_select by `select_extractor` (the
    per-eval one) if given, else by `extractor` too."""
    return {"final_extractor": extractor.name, "final_weights": None, "final_stats": stats[REPORT],
            "select_extractor": (select_extractor or extractor).name, "select_weights": None,
            "select_stats": (select_stats or stats)[SELECT]}


def test_winner_is_picked_by_the_re_measured_fid_not_the_per_eval_minimum(ray_local, tmp_path):
    data = toy_faces(1024, 32, seed=0)
    extractor = RandomConvFeatures(seed=0)
    stats = _halves(data, extractor)
    # "lucky": one G step, a generator of noise; "good": 150 steps of DCGAN on the faces.
    lucky = _checkpoint(CFG, data.images, extractor, stats[SELECT], tmp_path, "lucky")
    good_cfg = CFG.replace(steps_per_eval=150)
    good = _checkpoint(good_cfg, data.images, extractor, stats[SELECT], tmp_path, "good")
    # Their per-eval numbers as a noisy small-sample FID could have drawn them: in the wrong order.
    table = _table([("lucky", "stopped-early", False, 10.0), ("good", "completed", False, 50.0)])
    chosen = final.candidates(table, "fid", "min", top_k=2)
    assert chosen == ["lucky", "good"]
    measured = {t: m for t, (m, _) in final.measure_final(
        {"lucky": (CFG, lucky), "good": (good_cfg, good)}, dict(zip(table["trial_id"], table["group"])),
        kind=GAN, shared=_shared(extractor, stats), resources={"cpu": 1}).items()}
    assert measured["good"]["fid_select"] < measured["lucky"]["fid_select"]
    # One group: only its pick by fid_select is measured on the report draw.
    assert "fid_final" not in measured["lucky"] and math.isfinite(measured["good"]["fid_final"])
    for column in ("fid_select", "fid_final"):
        table[column] = [measured[t].get(column, math.nan) for t in table["trial_id"]]
    assert final.winner(table, *GAN.winner_by(None), measured=GAN.final_metric) == "good"
    assert all(math.isfinite(m["kid_select"]) for m in measured.values()) and math.isfinite(measured["good"]["kid_final"])


def test_fid_select_is_measured_by_the_per_eval_extractor_and_fid_final_by_the_standard_one(ray_local, tmp_path):
    # Two random-conv nets of other seeds stand in for the per-eval proxy and the standard network
    # (an Inception pass is minutes on a CPU); each draw must use its own net and its own statistics.
    data = toy_faces(256, 32, seed=0)
    per_eval, standard = RandomConvFeatures(seed=1), RandomConvFeatures(seed=0)
    per_eval_stats, standard_stats = _halves(data, per_eval, 128), _halves(data, standard, 128)
    good = _checkpoint(CFG, data.images, per_eval, per_eval_stats[SELECT], tmp_path, "good")
    measured = final.measure_final({"good": (CFG, good)}, {"good": "searched"}, kind=GAN,
                                   shared=_shared(standard, standard_stats, per_eval, per_eval_stats),
                                   resources={"cpu": 1})
    metrics, files = measured["good"]
    select, report = (json.loads(files[f"{d}_draw.json"]) for d in (SELECT, REPORT))
    assert (select["extractor"], report["extractor"]) == (per_eval.name, standard.name)
    assert (select["reference_key"], report["reference_key"]) == (per_eval_stats[SELECT].key, standard_stats[REPORT].key)
    G = load_generator(CFG, good.path)
    for record, extractor, stats, key in ((select, per_eval, per_eval_stats[SELECT], "fid_select"),
                                          (report, standard, standard_stats[REPORT], "fid_final")):
        expected = fid_kid_of(G, record["generated"], CFG.z_dim, record["z_seed"], extractor, stats)["fid"]
        assert metrics[key] == pytest.approx(expected, rel=1e-5)


def test_a_checkpoint_that_cannot_be_measured_is_left_out_not_fatal(ray_local, tmp_path):
    data = toy_faces(256, 32, seed=0)
    extractor = RandomConvFeatures(seed=0)
    stats = _halves(data, extractor, 128)
    good = _checkpoint(CFG, data.images, extractor, stats[SELECT], tmp_path, "good")
    (tmp_path / "broken").mkdir()  # a checkpoint directory whose file is gone
    broken = tune.Checkpoint.from_directory(str(tmp_path / "broken"))
    measured = final.measure({"good": (CFG, good), "broken": (CFG, broken)}, kind=GAN,
                             shared=_shared(extractor, stats), resources={"cpu": 1})
    assert set(measured) == {"good"} and math.isfinite(measured["good"][0]["fid_final"])


def test_the_winner_is_chosen_on_one_draw_and_reported_on_an_independent_one(ray_local, tmp_path):
    """The whole final evaluation (final.evaluate, MLflow logging included) and the winner as the
    driver picks it: selection and report draws differ in their z and in their real images, every
    candidate's run has its selection number, each group's pick its report number too, and the
    winner's reported number is its report draw's, recomputed here from what the draw recorded."""
    data = toy_faces(512, 32, seed=0)
    extractor = RandomConvFeatures(seed=0)
    stats = _halves(data, extractor, 256)
    configs = {"s1": CFG, "s2": CFG.replace(steps_per_eval=40), "w1": CFG.replace(steps_per_eval=20)}
    checkpoints = {t: _checkpoint(cfg, data.images, extractor, stats[SELECT], tmp_path, t) for t, cfg in configs.items()}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("final")
    run_ids = {t: client.create_run(experiment).info.run_id for t in configs}
    table = _table([("s1", "completed", False, 10.0), ("s2", "completed", False, 20.0),
                    ("w1", "completed", True, 30.0)])
    table["run_id"] = [run_ids[t] for t in table["trial_id"]]
    results = [SimpleNamespace(metrics={"trial_id": t}, config={"steps_per_eval": cfg.steps_per_eval},
                               best_checkpoints=[(checkpoints[t], {"fid": 1.0, "eval_period": 1})])
               for t, cfg in configs.items()]
    run = SimpleNamespace(
        sweep=SimpleNamespace(metric="fid", mode="min", final=SimpleNamespace(top_k=2),
                              trial_config=lambda sampled: CFG.replace(**sampled)),
        kind=GAN, per_trial={"cpu": 1}, tracking=SimpleNamespace(client=lambda: client),
        inputs=SimpleNamespace(trial={}, final=_shared(extractor, stats), measured_on="test",
                               final_tags={"sweeper.fid_final_extractor": extractor.name}))

    measured, chosen = final.evaluate(run, table, results)

    assert set(chosen) == {"s1", "s2", "w1"}
    rows = measured.set_index("trial_id")
    assert rows["fid_select"].notna().all()
    picks = {"searched": rows.loc[["s1", "s2"], "fid_select"].idxmin(), "warm-start": "w1"}
    assert set(rows.index[rows["fid_final"].notna()]) == set(picks.values())
    winner = final.winner(measured, *GAN.winner_by(None), measured=GAN.final_metric)
    assert winner == min(picks.values(), key=lambda t: rows.loc[t, "fid_select"])

    def draw(trial_id, which):
        path = client.download_artifacts(run_ids[trial_id], f"final/{which}_draw.json", str(tmp_path / trial_id))
        return json.loads(open(path).read())

    for trial_id in configs:
        logged = client.get_run(run_ids[trial_id]).data.metrics
        assert logged["fid_select"] == pytest.approx(rows.loc[trial_id, "fid_select"])
        assert ("fid_final" in logged) == (trial_id in picks.values())
    select, report = draw(winner, SELECT), draw(winner, REPORT)
    # Independent draws: other z (and other generated images), other real images.
    assert select["z_seed"] != report["z_seed"]
    assert select["reference_key"] == stats[SELECT].key and report["reference_key"] == stats[REPORT].key
    assert not set(stats[SELECT].indices) & set(stats[REPORT].indices)
    G = load_generator(configs[winner], checkpoints[winner].path)
    first = [next(generated_batches(G, 8, CFG.z_dim, d["z_seed"])) for d in (select, report)]
    assert not torch.equal(*first)
    # The reported value is the report draw's: recomputed from its record, and not the selection's.
    reported = fid_kid_of(G, report["generated"], CFG.z_dim, report["z_seed"], extractor, stats[REPORT])["fid"]
    assert rows.loc[winner, "fid_final"] == pytest.approx(reported, rel=1e-5) == report["metrics"]["fid_final"]
    chosen_by = fid_kid_of(G, select["generated"], CFG.z_dim, select["z_seed"], extractor, stats[SELECT])["fid"]
    assert rows.loc[winner, "fid_select"] == pytest.approx(chosen_by, rel=1e-5)
    assert rows.loc[winner, "fid_final"] != rows.loc[winner, "fid_select"]
    assert client.get_run(run_ids[winner]).data.metrics["fid_final"] == pytest.approx(reported, rel=1e-5)
