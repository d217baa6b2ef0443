"""The downstream half, end to end on CPU: tiny cat and dog generator sweeps on CIFAR-10's cats and
dogs, then a tiny classifier sweep that pulls both `@best` generators from the registry, trains on
their images (and on real ones), and tests the finalists once on the real test split. Real Ray,
Optuna, MLflow (sqlite) and PyTorch throughout; the photos are skipped with a reason if absent."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from mlflow.tracking import MlflowClient
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# What keeps each generator sweep around a minute on 2 cores: two trials (the two warm starts),
# one short eval period, 64-image FIDs. Generators this small draw blobs; the plumbing is what is tested.
TINY_GAN = ["--quick", "--num-samples", "2", "--set", "num_evals=1", "--set", "steps_per_eval=10",
            "--set", "fid_samples=64", "--set", "ref_samples=64", "--set", "final_fid_samples=64"]
GENERATORS = "cat=models:/cats-quick-generator@best,dog=models:/dogs-quick-generator@best"
TINY_CLASSIFIER = ["--quick", "--num-samples", "4", "--set", f"generators={GENERATORS}",
                   "--set", "steps_per_eval=6", "--set", "num_evals=2", "--set", "batch_size=16",
                   "--set", "val_fraction=0.05", "--set", "reference_max_evals=4", "--set", "reference_patience=2"]


def _sweeper(workdir, *args, timeout=900):
    env = {**os.environ, "SWEEPER_OFFLINE": "1", "SWEEPER_CACHE": str(workdir / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    catdog = shared_data("cifar10-catdog")
    workdir = tmp_path_factory.mktemp("catdog")
    for cls, name in (("cat", "cats"), ("dog", "dogs")):
        result = _sweeper(workdir, "run", str(REPO / "search_spaces" / "wgangp.py"), "--data", f"{catdog}:{cls}",
                          "--name", name, *TINY_GAN)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    result = _sweeper(workdir, "run", str(REPO / "search_spaces" / "classifier.py"), *TINY_CLASSIFIER,
                      "--set", f"data={catdog}", "--set", f"test_data={catdog / 'test'}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return workdir, result, MlflowClient(f"sqlite:///{workdir / 'sweeps' / 'mlflow.db'}")


def _runs(client, experiment="catdog"):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    return parent, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_every_classifier_run_leads_back_to_the_exact_generator_versions(sweeps):
    _, result, client = sweeps
    parent, children = _runs(client)
    assert len(children) == 4
    for cls, name in (("cat", "cats-quick-generator"), ("dog", "dogs-quick-generator")):
        version = client.get_model_version_by_alias(name, "best")
        source = client.get_run(version.run_id)
        for run in (parent, *children):
            params = run.data.params
            assert params[f"generator.{cls}.name"] == name
            assert params[f"generator.{cls}.version"] == str(version.version)
            assert params[f"generator.{cls}.run_id"] == version.run_id
            assert float(params[f"generator.{cls}.fid_final"]) == pytest.approx(source.data.metrics["fid_final"], rel=1e-5)
            assert params[f"generator.{cls}.fid_extractor"] == source.data.tags["sweeper.fid_final_extractor"]
        assert f"generator for {cls}: models:/{name}/{version.version} " in result.stdout


def test_trials_report_validation_accuracy_every_eval_period(sweeps):
    _, _, client = sweeps
    _, children = _runs(client)
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_acc")
        assert history and [m.step for m in history] == list(range(1, len(history) + 1))
        assert all(0 <= m.value <= 1 for m in history)
        assert child.info.status == "FINISHED" and child.data.tags["sweeper.outcome"] in ("completed", "stopped-early")


def test_the_final_evaluation_tests_only_each_groups_top_trial_once(sweeps):
    _, _, client = sweeps
    _, children = _runs(client)
    tested = [c for c in children if "test_acc" in c.data.metrics]
    # --quick: the top trial of each group (real-only, synthetic-only, mixed: one per real_fraction
    # value) by validation accuracy, and no other.
    groups = {c.data.params["real_fraction"] for c in children}
    assert {"0.0", "1.0"} <= groups  # the two warm starts
    assert sorted(c.data.params["real_fraction"] for c in tested) == sorted(groups)  # each group once
    assert len(tested) < len(children)  # some trial was not tested: "only the top" is exercised

    def best_val_acc(run):
        return max(m.value for m in client.get_metric_history(run.info.run_id, "val_acc"))
    for top in tested:
        group = [c for c in children if c.data.params["real_fraction"] == top.data.params["real_fraction"]]
        assert best_val_acc(top) == max(map(best_val_acc, group)), top.data.params["real_fraction"]
    for child in children:
        history = client.get_metric_history(child.info.run_id, "test_acc")
        artifacts = [a.path for a in client.list_artifacts(child.info.run_id, "final")]
        if child in tested:
            assert len(history) == 1 and 0 <= history[0].value <= 1  # logged once
            assert artifacts == ["final/confusion_matrix.png"]
            per_class = [child.data.metrics[f"test_acc_{cls}"] for cls in ("cat", "dog")]
            assert min(per_class) <= history[0].value <= max(per_class)
        else:
            assert history == [] and artifacts == []


def _digests(folder: Path) -> tuple[set[str], set[str]]:
    """blake2b-8 of each PNG's pixels as Pillow reads them (CIFAR is 32 px: no resize), as they are
    and mirrored left-right; independent of sweeper's decoding and hashing."""
    pixels = [np.asarray(Image.open(png).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
              for png in sorted(folder.rglob("*.png"))]
    return {_blake2b_8(a) for a in pixels}, {_blake2b_8(a[:, :, ::-1]) for a in pixels}


def _blake2b_8(pixels) -> str:
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=8).hexdigest()


def test_no_test_image_is_a_generators_training_image_and_every_run_says_so(sweeps, tmp_path):
    _, _, client = sweeps
    catdog = shared_data("cifar10-catdog")
    parent, children = _runs(client)
    test, test_mirrored = _digests(catdog / "test")
    assert parent.data.params["n_test"] == str(len(test)) == "2000"
    for cls, name in (("cat", "cats-quick-generator"), ("dog", "dogs-quick-generator")):
        # What the generator's run records is exactly its class's training photos...
        run_id = client.get_model_version_by_alias(name, "best").run_id
        record = Path(client.download_artifacts(run_id, "lineage/training_images.txt", str(tmp_path))).read_text()
        trained_on, _ = _digests(catdog / "train" / cls)
        assert set(record.splitlines()[1:]) == trained_on and len(trained_on) == 5000
        # ...none of which is a test photo, as they are or mirrored, which every classifier run records.
        assert not trained_on & (test | test_mirrored)
        for run in (parent, *children):
            assert run.data.params[f"generator.{cls}.training_images"] == "5000"
            assert run.data.params[f"generator.{cls}.test_overlap"] == "0"


def test_cas_ratio_is_the_synthetic_only_over_the_real_only_test_accuracy(sweeps):
    _, result, client = sweeps
    parent, children = _runs(client)
    tested = [c for c in children if "test_acc" in c.data.metrics]
    real = [c for c in tested if c.data.params["real_fraction"] == "1.0"]
    synthetic = [c for c in tested if c.data.params["real_fraction"] == "0.0"]
    assert len(real) == 1 and len(synthetic) == 1  # top_k = 1 per group
    # The real-only reference is the warm-start point, run on its own budget: past the searched
    # trials' 2 periods, until 2 periods without a better val_acc or its cap of 4.
    assert real[0].data.tags["sweeper.proposed_by"] == "warm-start"
    accs = [m.value for m in sorted(client.get_metric_history(real[0].info.run_id, "val_acc"), key=lambda m: m.step)]
    assert 3 <= len(accs) <= 4 and (len(accs) == 4 or max(accs[-2:]) <= max(accs[:-2])), accs
    metrics = parent.data.metrics
    for group, run in (("real_only", real[0]), ("synthetic_only", synthetic[0])):
        acc, n = run.data.metrics["test_acc"], int(run.data.metrics["test_n"])
        assert metrics[f"test_acc_{group}"] == pytest.approx(acc)
        # Wilson's interval, from its closed form, on the run and on the parent.
        z = 1.959964
        centre, half = (acc + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * (acc * (1 - acc) / n + z * z / (4 * n * n)) ** 0.5
        for where in (metrics, {"test_acc_" + group + "_low": run.data.metrics["test_acc_low"],
                                "test_acc_" + group + "_high": run.data.metrics["test_acc_high"]}):
            assert where[f"test_acc_{group}_low"] == pytest.approx(centre - half, abs=1e-6)
            assert where[f"test_acc_{group}_high"] == pytest.approx(centre + half, abs=1e-6)
    assert metrics["cas_ratio"] == pytest.approx(synthetic[0].data.metrics["test_acc"] / real[0].data.metrics["test_acc"])
    assert "test accuracy, 95% interval (Wilson): real-only" in result.stdout
    # Tiny generators: a score above chance only where neither interval includes chance, else none.
    at_chance = any(metrics[f"test_acc_{g}_low"] <= 0.5 for g in ("real_only", "synthetic_only"))
    assert ("cas_above_chance" not in metrics) == at_chance
    assert ("Classification Accuracy Score: none" in result.stdout) == at_chance


def test_the_best_classifier_is_registered_by_validation_accuracy(sweeps):
    import mlflow
    import torch

    _, _, client = sweeps
    parent, children = _runs(client)
    tested = {c.info.run_id: c for c in children if "test_acc" in c.data.metrics}
    version = client.get_model_version_by_alias("catdog-quick-classifier", "best")
    best_val = {run_id: max(m.value for m in client.get_metric_history(run_id, "val_acc")) for run_id in tested}
    assert best_val[version.run_id] == max(best_val.values())  # (ties are possible at this tiny budget)
    assert float(version.tags["test_acc"]) == pytest.approx(tested[version.run_id].data.metrics["test_acc"], rel=1e-5)
    assert version.tags["sweeper.generator.cat.version"] == parent.data.params["generator.cat.version"]
    assert version.tags["sweeper.resolution"] == "32" and version.tags["sweeper.test_fingerprint"]
    mlflow.set_tracking_uri(client._tracking_client.tracking_uri)
    model = mlflow.pytorch.load_model("models:/catdog-quick-classifier@best")
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 2)


def test_dry_run_shows_the_generator_versions_the_sweep_would_use(sweeps):
    workdir, _, client = sweeps
    catdog = shared_data("cifar10-catdog")
    result = _sweeper(workdir, "run", str(REPO / "search_spaces" / "classifier.py"), "--set", f"data={catdog}",
                      "--set", f"test_data={catdog / 'test'}", "--set", f"generators={GENERATORS}", "--dry-run",
                      timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    version = client.get_model_version_by_alias("dogs-quick-generator", "best").version
    assert f"generator for dog: models:/dogs-quick-generator@best -> models:/dogs-quick-generator/{version} " \
           in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--set", "generators=cat=models:/nobody-generator@best,dog=models:/dogs-quick-generator@best"],
     "generators.cat: models:/nobody-generator@best does not resolve"),
    (["--set", "resolution=64"], "makes 32 px images; the classifier's resolution is 64"),
    (["--set", "generators=cat=models:/cats-quick-generator@best"], "generators: no generator for class 'dog'"),
    (["--set", "generators=cat=models:/cats-quick-generator/1,bird=models:/dogs-quick-generator/1"],
     "generators.bird: the real data"),
    # The test split carved from the train/ photos the generators learnt: 20% of 5,000 per class.
    (["--set", "test_data="], "of its 2000 test images, 1000 are training images of generators.cat "
                              "(models:/cats-quick-generator/1, trained on "),
])
def test_bad_generator_inputs_are_one_line_errors_before_anything_starts(sweeps, args, message):
    workdir, _, _ = sweeps
    catdog = shared_data("cifar10-catdog")
    before = sorted(p.name for p in (workdir / "sweeps").iterdir())
    result = _sweeper(workdir, "run", str(REPO / "search_spaces" / "classifier.py"), "--set", f"data={catdog}",
                      "--set", f"test_data={catdog / 'test'}", "--set", f"generators={GENERATORS}", *args, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert sorted(p.name for p in (workdir / "sweeps").iterdir()) == before
