"""When `@best` moves: only to a version better on the same footing (a real MLflow sqlite registry)."""
import pytest
from mlflow.tracking import MlflowClient

from sweeper.tracking.registry import ALIAS, FOOTING_TAG, model_name, promote

FOOTING = {"sweeper.fid_final_extractor": "inception-v3-compat", "sweeper.data_fingerprint": "abc",
           "sweeper.resolution": "64", "sweeper.final_fid_samples": "10000", "sweeper.ref_samples": "5000"}
NAME = "cats-generator"


@pytest.fixture
def client(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model(NAME)
    return client


def _version(client, tmp_path, fid, **changes) -> str:
    source = tmp_path / "model"
    source.mkdir(exist_ok=True)
    tags = {**FOOTING, FOOTING_TAG: ",".join(FOOTING), "fid_final": str(fid), **changes}
    return client.create_model_version(NAME, source=str(source), tags=tags).version


def _best(client) -> str:
    return client.get_model_version_by_alias(NAME, ALIAS).version


def test_first_version_takes_best_and_a_better_one_moves_it(client, tmp_path):
    v1 = _version(client, tmp_path, 40.0)
    assert promote(client, NAME, v1, "fid_final", "min")[0] and _best(client) == v1
    v2 = _version(client, tmp_path, 35.5)
    moved, why = promote(client, NAME, v2, "fid_final", "min")
    assert moved and _best(client) == v2 and "35.5 below version 1's 40" in why
    assert client.get_model_version(NAME, v2).tags["sweeper.best_alias_decision"] == why


@pytest.mark.parametrize("changes, key", [
    ({}, None),                                                   # worse on the same footing
    ({"sweeper.data_fingerprint": "other"}, "sweeper.data_fingerprint"),   # --data elsewhere
    ({"sweeper.fid_final_extractor": "random-conv-v1-seed0"}, "sweeper.fid_final_extractor"),
    ({"sweeper.final_fid_samples": "256"}, "sweeper.final_fid_samples"),
    ({"sweeper.resolution": "32"}, "sweeper.resolution"),
    ({"sweeper.ref_samples": "512"}, "sweeper.ref_samples"),
])
def test_best_does_not_move_to_a_worse_or_incomparable_version(client, tmp_path, changes, key):
    v1 = _version(client, tmp_path, 40.0)
    promote(client, NAME, v1, "fid_final", "min")
    # Incomparable versions get a much lower FID: the footing, not the number, must stop them.
    v2 = _version(client, tmp_path, 45.0 if key is None else 5.0, **changes)
    moved, why = promote(client, NAME, v2, "fid_final", "min")
    assert not moved and _best(client) == v1
    assert ("is not below version 1's 40" in why) if key is None else (key in why and "another footing" in why)


def test_a_version_without_a_finite_fid_never_takes_best(client, tmp_path):
    v1 = _version(client, tmp_path, float("inf"))
    assert not promote(client, NAME, v1, "fid_final", "min")[0]


def test_a_higher_is_better_metric_moves_best_upwards_only(client, tmp_path):
    v1 = _version(client, tmp_path, 0.0, test_acc="0.80")
    assert promote(client, NAME, v1, "test_acc", "max")[0]
    v2 = _version(client, tmp_path, 0.0, test_acc="0.75")
    moved, why = promote(client, NAME, v2, "test_acc", "max")
    assert not moved and "is not above version 1's 0.8" in why
    v3 = _version(client, tmp_path, 0.0, test_acc="0.85")
    assert promote(client, NAME, v3, "test_acc", "max")[0] and _best(client) == v3


def test_quick_sweeps_register_under_their_own_name():
    assert model_name("wgangp", "generator") == "wgangp-generator"
    assert model_name("wgangp", "generator", quick=True) == "wgangp-quick-generator"
    assert model_name("pets", "classifier") == "pets-classifier"
