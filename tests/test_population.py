"""PBT and PB2 as a Sweep defines them (sweeper.definition, sweeper.kinds.complete) and as Tune runs
them (sweeper.search.population): with sweeper's searcher proposing the population, a missing
mutated key starting at the config's value, perturbed values kept in their ranges, and each exploit
counting the member's generation. Real Ray Tune on a trivial trainable; the GAN sweep is test_pbt.py."""
import json
import sys
import tempfile
from pathlib import Path

import pytest
import ray
from ray import tune

from sweeper import PB2, PBT, Range, Sweep
from sweeper.definition import GENERATION_KEY, SweepError
from sweeper.kinds import complete
from sweeper.search.population import build_population, keep_within
from sweeper.search.tuner import build_searcher
from trainables.classifier.config import ClassifierConfig
from trainables.config import GANConfig

CFG = GANConfig(data="toy-faces", loss="wgan-gp", num_evals=6, g_lr=2e-4, gp_weight=10.0)


def test_the_kinds_mutations_fill_what_the_file_leaves_out_and_only_mutable_keys_may_change():
    pbt = complete(Sweep("p", CFG, space={"d_lr": tune.loguniform(1e-5, 1e-3)}, scheduler=PBT())).scheduler
    assert set(pbt.mutations) == {"g_lr", "d_lr", "beta1", "n_critic", "ema_decay", "gp_weight"}
    no_gp = complete(Sweep("p", CFG.replace(loss="bce"), space={}, scheduler=PBT())).scheduler
    assert "gp_weight" not in no_gp.mutations  # no gradient penalty to weigh
    pb2 = complete(Sweep("p", CFG, space={}, scheduler=PB2())).scheduler
    assert pb2.bounds["g_lr"] == (1e-5, 1e-3) and "n_critic" not in pb2.bounds  # PB2 is continuous
    given = PBT(mutations={"g_lr": [1e-4, 2e-4]})
    assert complete(Sweep("p", CFG, space={}, scheduler=given)).scheduler == given
    with pytest.raises(SweepError, match=r"scheduler.mutations\['resolution'\]: cannot change"):
        complete(Sweep("p", CFG, space={}, scheduler=PBT(mutations={"resolution": [32, 64]})))
    with pytest.raises(SweepError, match="ClassifierConfig's cannot"):
        complete(Sweep("p", ClassifierConfig(), space={}, scheduler=PBT()))
    with pytest.raises(SweepError, match="budget: 50kimg .* device time"):
        complete(Sweep("p", CFG, space={}, scheduler=PBT(), budget="50kimg"))


@pytest.mark.parametrize("bad, match", [
    (dict(interval=0), "scheduler.interval"), (dict(quantile=0.75), r"scheduler.quantile: must be in \(0, 0.5\]"),
    (dict(mutations={"g_lr": [1e-4]}), r"mutations\['g_lr'\]"), (dict(resample_probability=2), "resample_probability"),
])
def test_a_bad_pbt_option_names_itself(bad, match):
    with pytest.raises(SweepError, match=match):
        PBT(**bad)
    with pytest.raises(SweepError, match="log range needs low > 0"):
        Range(0.0, 1.0, log=True)


def test_a_perturbed_value_is_kept_within_its_range():
    ranges = {"g_lr": Range(1e-5, 1e-3, log=True), "gp_weight": Range(1.0, 100.0)}
    kept = keep_within(ranges, {"g_lr": 1.2e-3, "gp_weight": 0.8, "n_critic": 5})
    assert kept == {"g_lr": 1e-3, "gp_weight": 1.0, "n_critic": 5}
    assert keep_within(ranges, {"g_lr": 5e-4, "gp_weight": 50.0})["g_lr"] == 5e-4


@pytest.fixture(scope="module")
def ray_local():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    yield
    ray.shutdown()


def _member(config):
    """A trivial trainable: its fid falls by g_lr per period, from where its checkpoint left it."""
    fid, period = 100.0, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            fid, period = json.loads((Path(directory) / "state.json").read_text())
    while period < config["num_evals"]:
        period += 1
        fid -= config["g_lr"] * 1e5
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "state.json").write_text(json.dumps([fid, period]))
            tune.report({"fid": fid, "eval_period": period, "gp_weight": config["gp_weight"]},
                        checkpoint=tune.Checkpoint.from_directory(directory))


@pytest.mark.parametrize("scheduler", [
    PBT(interval=1, quantile=0.5, resample_probability=0.0,
        mutations={"g_lr": Range(1e-5, 1e-3, log=True), "gp_weight": Range(1.0, 100.0, log=True)}),
    PB2(interval=1, quantile=0.5, bounds={"g_lr": (1e-5, 1e-3), "gp_weight": (1.0, 100.0)}),
], ids=["pbt", "pb2"])
def test_a_population_starts_from_the_searchers_proposals_and_counts_generations(ray_local, tmp_path, scheduler,
                                                                                 capsys):
    sweep = complete(Sweep("p", CFG, space={"g_lr": tune.loguniform(1e-5, 1e-4)}, scheduler=scheduler,
                           num_samples=4))
    results = tune.Tuner(
        _member, param_space={**sweep.space, "num_evals": 6},
        tune_config=tune.TuneConfig(metric="fid", mode="min", search_alg=build_searcher(sweep), num_samples=4,
                                    scheduler=build_population(sweep, "eval_period"), reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    assert not results.errors
    configs = [r.config for r in results]
    # gp_weight is not searched: every member started at the config's 10, not at a random draw.
    assert all(r.metrics_dataframe["gp_weight"].iloc[0] == pytest.approx(10.0) for r in results)
    clones = [c for c in configs if c.get(GENERATION_KEY, 0) > 0]
    assert clones, "no exploit in 6 periods of 4 members"
    assert all(1e-5 <= c["g_lr"] <= 1e-3 and 1.0 <= c["gp_weight"] <= 100.0 for c in configs), configs
    lines = [line for line in capsys.readouterr().out.splitlines() if "exploit: takes" in line]
    assert len(lines) >= sum(c.get(GENERATION_KEY, 0) for c in configs)  # one line per exploit, at least
