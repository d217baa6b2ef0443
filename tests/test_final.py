"""The final evaluation: candidates, re-measurement as real Ray tasks on real checkpoints, the
winner by `fid_final` (not by the noisy per-eval minimum), and the gain over the baseline."""
import math
import shutil

import pandas as pd
import pytest
import ray
from ray import tune

from sweeper.driver import final
from sweeper.kinds.gan import GAN
from sweeper.kinds.refstats import reference_stats
from sweeper.tracking.outcomes import baseline_gain
from trainables.config import GANConfig
from trainables.data import toy_faces
from trainables.metrics import RandomConvFeatures
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


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    yield
    ray.shutdown()


def _checkpoint(cfg, images, extractor, ref, root, name):
    kept = []

    def report(metrics, directory):
        shutil.copytree(directory, root / name, dirs_exist_ok=True)
        kept.append(tune.Checkpoint.from_directory(str(root / name)))

    train_gan(cfg, report, images=images, extractor=extractor, ref_stats=ref)
    return kept[-1]


def test_winner_is_picked_by_the_re_measured_fid_not_the_per_eval_minimum(ray_local, tmp_path):
    data = toy_faces(1024, 32, seed=0)
    extractor = RandomConvFeatures(seed=0)
    ref = reference_stats(data.images, data.fingerprint, extractor, CFG.ref_samples)
    # "lucky": one G step, a generator of noise; "good": 150 steps of DCGAN on the faces.
    lucky = _checkpoint(CFG, data.images, extractor, ref, tmp_path, "lucky")
    good_cfg = CFG.replace(steps_per_eval=150)
    good = _checkpoint(good_cfg, data.images, extractor, ref, tmp_path, "good")
    # Their per-eval numbers as a noisy small-sample FID could have drawn them: in the wrong order.
    table = _table([("lucky", "stopped-early", False, 10.0), ("good", "completed", False, 50.0)])
    chosen = final.candidates(table, "fid", "min", top_k=2)
    assert chosen == ["lucky", "good"]
    measured = {t: m for t, (m, _) in final.measure({"lucky": (CFG, lucky), "good": (good_cfg, good)},
                                                   kind=GAN, shared=_shared(extractor, ref), resources={"cpu": 1}).items()}
    table["fid_final"] = [measured["lucky"]["fid_final"], measured["good"]["fid_final"]]
    assert measured["good"]["fid_final"] < measured["lucky"]["fid_final"]
    assert final.winner(table, "fid_final", "min", measured="fid_final") == "good"
    assert all(math.isfinite(m["kid_final"]) for m in measured.values())


def test_a_checkpoint_that_cannot_be_measured_is_left_out_not_fatal(ray_local, tmp_path):
    data = toy_faces(256, 32, seed=0)
    extractor = RandomConvFeatures(seed=0)
    ref = reference_stats(data.images, data.fingerprint, extractor, 256)
    good = _checkpoint(CFG, data.images, extractor, ref, tmp_path, "good")
    (tmp_path / "broken").mkdir()  # a checkpoint directory whose file is gone
    broken = tune.Checkpoint.from_directory(str(tmp_path / "broken"))
    measured = final.measure({"good": (CFG, good), "broken": (CFG, broken)}, kind=GAN,
                             shared=_shared(extractor, ref), resources={"cpu": 1})
    assert set(measured) == {"good"} and math.isfinite(measured["good"][0]["fid_final"])


def _shared(extractor, ref) -> dict:
    return {"final_extractor": extractor.name, "final_weights": None, "final_stats": ref}
