"""Where `@best` points: the best version on the new version's footing, recomputed from a real MLflow
registry (a sqlite store; a real `mlflow server` where sweeps register at once or the server fails)."""
import http.client
import http.server
import logging
import random
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import free_port, start_server, stop_server, wait_until_up
from mlflow.store.entities.paged_list import PagedList
from mlflow.tracking import MlflowClient
from packaging.version import Version

from sweeper.kinds.gan import extractor_footing
from sweeper.tracking.registry import (
    ALIAS,
    DECISION_TAG,
    _one_line,
    describe_footing,
    log_pt2_model,
    model_name,
    promote,
    tag_version,
)
from sweeper.tracking.runs import Tracking
from trainables.metrics import ExtractorSpec

SHA_A, SHA_B = "a" * 64, "b" * 64
INCEPTION_FP32 = ExtractorSpec("inception-v3-compat", 2048, "/weights.pth", "fp32", SHA_A)
FOOTING = {**extractor_footing(INCEPTION_FP32), "sweeper.data_fingerprint": "abc", "sweeper.resolution": "64",
           "sweeper.final_fid_samples": "10000", "sweeper.ref_samples": "5000"}
NAME = "cats-generator"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A migrated, empty sqlite store: each test copies it, as MLflow's schema migrations take seconds a store."""
    db = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_registered_models()  # creates the tracking and registry tables
    return db


@pytest.fixture
def client(tmp_path, empty_store):
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model(NAME)
    return client


def _version(client, tmp_path, fid, footing=FOOTING, name=NAME, **changes) -> str:
    """A version tagged as sweeper.driver.register tags it: created bare, then tag_version."""
    source = tmp_path / "model"
    source.mkdir(exist_ok=True)
    version = str(client.create_model_version(name, source=str(source)).version)  # int from sqlite, str over REST
    tags = {"fid_final": str(fid), **{k: v for k, v in changes.items() if k in ("fid_final", "test_acc", "test_acc_low", "test_acc_high")}}
    footing = {**footing, **{k: v for k, v in changes.items() if k not in tags}}
    tag_version(client, name, version, tags=tags, footing=footing, description="test")
    return version


def _best(client, name=NAME) -> str:
    return str(client.get_model_version_by_alias(name, ALIAS).version)


def test_first_version_takes_best_and_a_better_one_moves_it(client, tmp_path):
    v1 = _version(client, tmp_path, 40.0)
    assert promote(client, NAME, v1, "fid_final", "min").moved and _best(client) == v1
    v2 = _version(client, tmp_path, 35.5)
    moved, why, updated = promote(client, NAME, v2, "fid_final", "min")
    assert moved and updated and _best(client) == v2 and "35.5 below version 1's 40" in why
    # The line names the footing it compared on: extractor, weights (cut), precision.
    assert "fid_final_extractor=inception-v3-compat" in why and f"fid_final_weights_sha256={SHA_A[:12]}" in why
    assert "fid_final_precision=fp32" in why and "of 2 versions" in why
    assert client.get_model_version(NAME, v2).tags[DECISION_TAG] == why


@pytest.mark.parametrize("changes, key", [
    ({}, None),                                                   # worse on the same footing
    ({"sweeper.data_fingerprint": "other"}, "sweeper.data_fingerprint"),   # --data elsewhere
    ({"sweeper.fid_final_extractor": "random-conv-v1-seed0"}, "sweeper.fid_final_extractor"),
    ({"sweeper.final_fid_samples": "256"}, "sweeper.final_fid_samples"),
    ({"sweeper.resolution": "32"}, "sweeper.resolution"),
    ({"sweeper.ref_samples": "512"}, "sweeper.ref_samples"),
    ({"sweeper.fid_final_draw": "report-half-v1"}, "sweeper.fid_final_draw"),  # a footing key the old one lacks
])
def test_best_does_not_move_to_a_worse_or_incomparable_version(client, tmp_path, changes, key):
    v1 = _version(client, tmp_path, 40.0)
    promote(client, NAME, v1, "fid_final", "min")
    # Incomparable versions get a much lower FID: the footing, not the number, must stop them.
    v2 = _version(client, tmp_path, 45.0 if key is None else 5.0, **changes)
    moved, why, updated = promote(client, NAME, v2, "fid_final", "min")
    assert not moved and updated and _best(client) == v1
    assert ("is not below version 1's 40" in why) if key is None else (key in why and "another footing" in why)


@pytest.mark.parametrize("other", [
    replace(INCEPTION_FP32, precision="bf16"),        # a bf16 FID is not an fp32 one
    replace(INCEPTION_FP32, precision="tf32"),
    replace(INCEPTION_FP32, weights_sha256=SHA_B),    # another file under the name inception-v3-compat
])
def test_the_extractor_footing_keeps_precision_and_weights_apart(client, tmp_path, other):
    v1 = _version(client, tmp_path, 40.0)
    promote(client, NAME, v1, "fid_final", "min")
    v2 = _version(client, tmp_path, 5.0, footing={**FOOTING, **extractor_footing(other)})
    moved, why, _ = promote(client, NAME, v2, "fid_final", "min")
    assert not moved and _best(client) == v1 and "another footing" in why
    # Nor does a later version on v1's footing ever rank v2: it is the best of its own footing only.
    v3 = _version(client, tmp_path, 39.0)
    assert promote(client, NAME, v3, "fid_final", "min").moved and _best(client) == v3


def test_best_is_the_argmin_of_the_registry_not_of_the_last_alias(client, tmp_path):
    fids = {_version(client, tmp_path, fid): fid for fid in (40.0, 31.0, 35.0)}
    # @best set by hand (or by an older sweeper) to a version that is not the best on its footing.
    client.set_registered_model_alias(NAME, ALIAS, "1")
    v4 = _version(client, tmp_path, 33.0)
    fids[v4] = 33.0
    moved, why, _ = promote(client, NAME, v4, "fid_final", "min")
    assert not moved and _best(client) == min(fids, key=fids.get) == "2"
    assert "is not below version 2's 31" in why and "of 4 versions" in why


def test_a_tie_keeps_the_older_version(client, tmp_path):
    v1 = _version(client, tmp_path, 40.0)
    promote(client, NAME, v1, "fid_final", "min")
    v2 = _version(client, tmp_path, 40.0)
    assert not promote(client, NAME, v2, "fid_final", "min").moved and _best(client) == v1


def _aliases(client, name=NAME) -> dict:
    """The registry's own aliases of `name`: what promote did, whatever it returned."""
    return client.get_registered_model(name).aliases


def test_a_version_without_a_finite_fid_never_takes_best(client, tmp_path):
    v1 = _version(client, tmp_path, float("inf"))
    assert not promote(client, NAME, v1, "fid_final", "min").moved
    assert ALIAS not in _aliases(client)  # the registry's @best stayed unset, not just the return value


def test_a_test_accuracy_difference_inside_its_intervals_is_said_to_be_noise(client, tmp_path):
    v1 = _version(client, tmp_path, 0.0, test_acc="0.80", test_acc_low="0.78", test_acc_high="0.82")
    assert promote(client, NAME, v1, "test_acc", "max").moved
    close = _version(client, tmp_path, 0.0, test_acc="0.81", test_acc_low="0.79", test_acc_high="0.83")
    moved, why, _ = promote(client, NAME, close, "test_acc", "max")
    assert moved and "inside the noise" in why and "[0.79, 0.83]" in why and "[0.78, 0.82]" in why
    assert _best(client) == close  # noise is said, the numbers still decide
    apart = _version(client, tmp_path, 0.0, test_acc="0.90", test_acc_low="0.885", test_acc_high="0.915")
    moved, why, _ = promote(client, NAME, apart, "test_acc", "max")
    assert moved and "noise" not in why and _best(client) == apart  # intervals apart: a real difference
    below = _version(client, tmp_path, 0.0, test_acc="0.89", test_acc_low="0.875", test_acc_high="0.905")
    moved, why, _ = promote(client, NAME, below, "test_acc", "max")
    assert not moved and "inside the noise" in why and _best(client) == apart


def test_a_half_tagged_version_is_on_no_footing(client, tmp_path):
    # A concurrent sweep's version whose tags are still being written (no sweeper.footing yet).
    v1 = str(client.create_model_version(NAME, source=str(tmp_path), tags={**FOOTING, "fid_final": "1"}).version)
    assert not promote(client, NAME, v1, "fid_final", "min").moved and ALIAS not in _aliases(client)
    v2 = _version(client, tmp_path, 40.0)
    assert promote(client, NAME, v2, "fid_final", "min").moved and _best(client) == v2 != v1


def test_a_higher_is_better_metric_moves_best_upwards_only(client, tmp_path):
    v1 = _version(client, tmp_path, 0.0, test_acc="0.80")
    assert promote(client, NAME, v1, "test_acc", "max").moved
    v2 = _version(client, tmp_path, 0.0, test_acc="0.75")
    moved, why, _ = promote(client, NAME, v2, "test_acc", "max")
    assert not moved and "is not above version 1's 0.8" in why and _best(client) == v1
    v3 = _version(client, tmp_path, 0.0, test_acc="0.85")
    assert promote(client, NAME, v3, "test_acc", "max").moved and _best(client) == v3


def test_a_quick_sweeps_model_never_competes_with_the_real_one(client, tmp_path):
    real = model_name("cats", "generator")
    assert real == NAME
    v1 = _version(client, tmp_path, 40.0)
    promote(client, real, v1, "fid_final", "min")
    # A --quick sweep of the same name, same footing and a far better (CPU-budget) FID.
    quick = model_name("cats", "generator", quick=True)
    client.create_registered_model(quick)
    q1 = _version(client, tmp_path, 5.0, name=quick)
    assert promote(client, quick, q1, "fid_final", "min").moved and _best(client, quick) == q1
    assert _best(client, real) == v1 and len(client.search_model_versions(f"name = '{real}'")) == 1


# FOOTING as the decisions print it: sorted, without "sweeper.", the weights' digest cut to 12.
SHOWN = ("[data_fingerprint=abc, fid_final_extractor=inception-v3-compat, fid_final_precision=fp32, "
         "fid_final_weights_sha256=aaaaaaaaaaaa..., final_fid_samples=10000, ref_samples=5000, resolution=64]")


def test_each_decision_is_one_line_naming_the_numbers_the_versions_and_the_footing(client, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sweeper.tracking.registry"):
        v1 = _version(client, tmp_path, 40.0)
        assert promote(client, NAME, v1, "fid_final", "min") == (
            True, f"moved: fid_final 40, the lowest of 1 version on footing {SHOWN} (no version had @best yet)", True)
        v2 = _version(client, tmp_path, 35.5)
        assert promote(client, NAME, v2, "fid_final", "min") == (
            True, f"moved: fid_final 35.5 below version 1's 40, the lowest of 2 versions on footing {SHOWN}", True)
        v3 = _version(client, tmp_path, 45.0)
        assert promote(client, NAME, v3, "fid_final", "min") == (
            False, f"not moved: fid_final 45 is not below version 2's 35.5, the lowest of 3 versions on footing {SHOWN}",
            True)
        # Deciding again for the version @best already points to (a concurrent decision got there first).
        assert promote(client, NAME, v2, "fid_final", "min") == (
            True, f"moved: fid_final 35.5, the lowest of 3 versions on footing {SHOWN}", True)
    assert _best(client) == v2 and client.get_model_version(NAME, v3).description == "test"
    assert not caplog.records  # the registry answered every call: nothing to warn about


def test_a_version_on_another_footing_is_told_the_first_tag_that_differs(client, tmp_path):
    v1 = _version(client, tmp_path, 40.0)
    promote(client, NAME, v1, "fid_final", "min")
    other = _version(client, tmp_path, 5.0, **{"sweeper.data_fingerprint": "other", "sweeper.resolution": "32"})
    assert promote(client, NAME, other, "fid_final", "min") == (
        False, "not moved: @best is version 1, measured on another footing (sweeper.data_fingerprint other vs abc), "
        "so the numbers do not compare; this version's footing: "
        f"{SHOWN.replace('=abc', '=other').replace('resolution=64', 'resolution=32')}", True)


def test_a_version_without_a_finite_number_or_a_footing_is_told_so(client, tmp_path):
    diverged = _version(client, tmp_path, float("nan"))
    assert promote(client, NAME, diverged, "fid_final", "min") == (
        False, "not moved: this version has no finite fid_final", True)
    untagged = str(client.create_model_version(NAME, source=str(tmp_path), tags={"fid_final": "1"}).version)
    assert promote(client, NAME, untagged, "fid_final", "min") == (
        False, "not moved: this version has no footing tag (sweeper.footing)", True)


def test_a_higher_is_better_decision_says_above_and_highest_and_touching_intervals_overlap(client, tmp_path):
    v1 = _version(client, tmp_path, 0.0, test_acc="0.5", test_acc_low="0.25", test_acc_high="0.75")
    assert promote(client, NAME, v1, "test_acc", "max").why == (
        f"moved: test_acc 0.5, the highest of 1 version on footing {SHOWN} (no version had @best yet)")
    # Its interval starts where v1's ends: closed intervals that meet overlap.
    v2 = _version(client, tmp_path, 0.0, test_acc="0.875", test_acc_low="0.75", test_acc_high="1.0")
    assert promote(client, NAME, v2, "test_acc", "max").why == (
        f"moved: test_acc 0.875 above version 1's 0.5, the highest of 2 versions on footing {SHOWN}; a difference "
        "inside the noise: the 95% intervals [0.75, 1] and version 1's [0.25, 0.75] overlap")
    v3 = _version(client, tmp_path, 0.0, test_acc="0.625", test_acc_low="0.5", test_acc_high="0.75")
    assert promote(client, NAME, v3, "test_acc", "max") == (
        False, f"not moved: test_acc 0.625 is not above version 2's 0.875, the highest of 3 versions on footing "
        f"{SHOWN}; a difference inside the noise: the 95% intervals [0.5, 0.75] and version 2's [0.75, 1] overlap", True)
    v4 = _version(client, tmp_path, 0.0, test_acc="0.25", test_acc_low="0.125", test_acc_high="0.375")
    assert promote(client, NAME, v4, "test_acc", "max") == (
        False, f"not moved: test_acc 0.25 is not above version 2's 0.875, the highest of 4 versions on footing {SHOWN}",
        True)  # intervals apart: nothing said about noise


def test_a_registry_error_leaves_best_and_warns_once_naming_both_failed_calls(client, tmp_path, caplog):
    v1 = _version(client, tmp_path, 40.0)
    promote(client, NAME, v1, "fid_final", "min")
    missing = "MlflowException: Model Version (name=cats-generator, version=7) not found"
    with caplog.at_level(logging.WARNING, logger="sweeper.tracking.registry"):
        decision = promote(client, NAME, "7", "fid_final", "min")  # a version the registry does not have
    assert decision == (False, f"not updated: the registry failed ({missing}); @best left where it was", False)
    assert [r.getMessage() for r in caplog.records] == [
        f"models:/cats-generator@best {decision.why}; the decision not recorded on version 7 ({missing})"]
    assert _best(client) == v1


def test_an_error_is_shown_by_its_type_and_first_line_cut_in_the_middle_past_300_characters():
    assert _one_line(TimeoutError()) == "TimeoutError: "
    assert _one_line(RuntimeError("\n  503 Service Unavailable\nretries exhausted")) == "RuntimeError: 503 Service Unavailable"
    assert _one_line(ValueError("x" * 300)) == "ValueError: " + "x" * 300
    assert _one_line(ValueError("h" * 140 + "m" * 21 + "t" * 140)) == "ValueError: " + "h" * 140 + " ... " + "t" * 140


def test_no_footing_is_shown_as_none_and_only_64_character_strings_are_cut():
    assert describe_footing(None) == describe_footing({}) == "[none]"
    assert describe_footing({"sweeper.b": "c" * 64, "a": "d" * 63, "sweeper.n": 64}) == (
        f"[a={'d' * 63}, b=cccccccccccc..., n=64]")


class _Meanwhile(MlflowClient):
    """The real registry, where every listing of the versions comes just after `meanwhile(client)`: another
    writer's calls landing between a decision's read of @best and its listing, in a fixed order."""

    def __init__(self, uri, meanwhile):
        super().__init__(uri)
        self.meanwhile = meanwhile

    def search_model_versions(self, *args, **kwargs):
        self.meanwhile(self)
        return super().search_model_versions(*args, **kwargs)


def test_best_that_keeps_changing_under_concurrent_sweeps_is_given_up_after_five_rounds(client, tmp_path, caplog):
    v1 = _version(client, tmp_path, 40.0)
    promote(client, NAME, v1, "fid_final", "min")
    new = _version(client, tmp_path, 35.0)
    arrived = []

    def another_sweep_registers_a_better_version(registry):
        arrived.append(_version(registry, tmp_path, 35.0 - len(arrived) - 1))
        registry.set_registered_model_alias(NAME, ALIAS, arrived[-1])

    with caplog.at_level(logging.WARNING, logger="sweeper.tracking.registry"):
        decision = promote(_Meanwhile(client.tracking_uri, another_sweep_registers_a_better_version), NAME, new,
                           "fid_final", "min")
    why = ("not updated: @best kept changing under concurrent sweeps for 5 rounds; it may not be the best on footing "
           f"{SHOWN}")
    assert decision == (False, why, False) and len(arrived) == 5
    assert [r.getMessage() for r in caplog.records] == [f"models:/cats-generator@best {why}"]
    assert _best(client) == arrived[-1] and client.get_model_version(NAME, new).tags[DECISION_TAG] == why


def test_best_on_a_version_deleted_meanwhile_is_left_alone(client, tmp_path):
    v1 = _version(client, tmp_path, 40.0)
    promote(client, NAME, v1, "fid_final", "min")
    v2 = _version(client, tmp_path, 35.0)
    # @best read as version 1, which someone deletes (and MLflow its alias) before the versions are listed.
    decision = promote(_Meanwhile(client.tracking_uri, lambda registry: registry.delete_model_version(NAME, v1)),
                       NAME, v2, "fid_final", "min")
    assert decision == (False, "not moved: @best points to version 1, which the registry does not list", True)
    assert ALIAS not in _aliases(client)


class _Lagging(MlflowClient):
    """The real registry, whose listing of the versions does not show `hidden` yet (a search that lags the
    write that registered it, as a replica or a search index can)."""

    def __init__(self, uri, hidden: str):
        super().__init__(uri)
        self.hidden = hidden

    def search_model_versions(self, *args, **kwargs):
        page = super().search_model_versions(*args, **kwargs)
        return PagedList([v for v in page if str(v.version) != self.hidden], page.token)


def test_a_new_version_the_listing_does_not_show_yet_is_still_weighed(client, tmp_path):
    v1 = _version(client, tmp_path, 40.0)
    promote(client, NAME, v1, "fid_final", "min")
    v2 = _version(client, tmp_path, 35.0)
    decision = promote(_Lagging(client.tracking_uri, v2), NAME, v2, "fid_final", "min")
    assert decision[:2] == (True, f"moved: fid_final 35 below version 1's 40, the lowest of 2 versions on footing {SHOWN}")
    assert _best(client) == v2


def test_a_model_is_logged_into_its_run_as_pt2_registered_and_loads_back_computing_the_same(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("models", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).eval()
    example = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    previous = mlflow.get_tracking_uri()
    try:
        version = log_pt2_model(Tracking(uri, experiment, run_id), run_id, model, example, name="generator",
                                registered_name=NAME)
        registered = client.get_model_version(NAME, version)
        assert version == "1" and registered.run_id == run_id
        assert [m.name for m in client.search_logged_models([experiment])] == ["generator"]
        loaded = mlflow.pytorch.load_model(f"models:/{NAME}/{version}")
        requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{NAME}/{version}")).read_text().split()
    finally:
        mlflow.set_tracking_uri(previous)
    # pt2 loads back as torch.export's graph, not as the pickled nn.Linear; it computes the same.
    assert not isinstance(loaded, torch.nn.Linear)
    x = torch.from_numpy(example)
    assert torch.allclose(loaded(x), x @ model.weight.T + model.bias)
    # Given, not inferred: MLflow and the installed torch, pinned without its local build tag (+cu130), which
    # pip could not install from PyPI.
    assert sorted(requirements) == [f"mlflow=={mlflow.__version__}", f"torch=={Version(torch.__version__).public}"]


# --- a real `mlflow server`: sweeps registering at once, and a server that fails ---

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry_server")
    port = free_port()
    process = start_server(root, port)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process, root / "server.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


def _server_version(client, name: str, fid: float) -> str:
    """Registered as a sweep registers its winner: a version of a run's model, then tagged."""
    run = client.create_run("0")
    version = str(client.create_model_version(name, source=f"{run.info.artifact_uri}/model",
                                              run_id=run.info.run_id).version)
    tag_version(client, name, version, tags={"fid_final": f"{fid:.6g}"}, footing=FOOTING, description="test")
    return version


def _sweep(uri: str, name: str, fids: list[float], seed: int, registered: dict, errors: list) -> None:
    client, jitter = MlflowClient(uri), random.Random(seed)
    try:
        for fid in fids:
            version = _server_version(client, name, fid)
            registered[version] = fid
            threading.Event().wait(jitter.uniform(0, 0.05))  # vary the interleaving between repetitions
            promote(client, name, version, "fid_final", "min")
    except Exception as exc:  # surfaced by the test: a thread's exception is otherwise lost
        errors.append(exc)


@pytest.mark.parametrize("repetition", range(4))
def test_two_sweeps_registering_at_once_leave_best_on_the_argmin(server, repetition):
    name = f"race-{repetition}-generator"
    client = MlflowClient(server)
    client.create_registered_model(name)
    rng = random.Random(repetition)
    fids = [[round(rng.uniform(10, 90), 3) for _ in range(3)] for _ in range(2)]
    registered, errors = {}, []
    threads = [threading.Thread(target=_sweep, args=(server, name, own, repetition * 10 + i, registered, errors))
               for i, own in enumerate(fids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors and len(registered) == 6
    argmin = min(registered, key=lambda v: (registered[v], int(v)))  # from what the test registered
    assert registered[argmin] == min(fids[0] + fids[1])
    assert _best(client, name) == argmin
    assert client.get_model_version(name, argmin).tags[DECISION_TAG].startswith("moved")


class _Failing(http.server.BaseHTTPRequestHandler):
    """Forwards every request to the real server, except that it answers 503 to `fail` (method, path)."""
    upstream: str
    fail: tuple[str, str]

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if (self.command, self.path.split("?")[0]) == self.fail:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        upstream = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("fail", [
    ("GET", "/api/2.0/mlflow/registered-models/get"),      # reading where @best points
    ("GET", "/api/2.0/mlflow/model-versions/search"),      # reading the versions to rank
    ("POST", "/api/2.0/mlflow/registered-models/alias"),   # setting @best
])
def test_a_503_leaves_best_where_it_was_and_says_so(server, monkeypatch, caplog, fail):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the client's own retries would only delay the 503
    name = f"outage-{fail[1].rsplit('/', 2)[-2]}-{fail[0].lower()}-generator"
    direct = MlflowClient(server)
    direct.create_registered_model(name)
    v1 = _server_version(direct, name, 40.0)
    assert promote(direct, name, v1, "fid_final", "min").moved
    v2 = _server_version(direct, name, 30.0)  # better: @best would move to it if the server answered
    handler = type("Handler", (_Failing,), {"upstream": server.removeprefix("http://"), "fail": fail})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        with caplog.at_level(logging.WARNING, logger="sweeper.tracking.registry"):
            moved, why, updated = promote(MlflowClient(f"http://127.0.0.1:{proxy.server_address[1]}"), name, v2,
                                          "fid_final", "min")
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert not moved and not updated and _best(direct, name) == v1
    assert why.startswith("not updated") and "503" in why and f"@{ALIAS} left where it was" in why
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0] and f"{name}@{ALIAS} not updated" in warnings[0]
    recorded = direct.get_model_version(name, v2).tags.get(DECISION_TAG)
    if fail[1].endswith("registered-models/get"):
        # MLflow's client reads the registered model before it tags a version: that record fails too,
        # and the same one warning says so.
        assert recorded is None and "the decision not recorded on version" in warnings[0]
    else:
        assert recorded == why and "not recorded" not in warnings[0]
    # Once the server answers again, the next decision (any version's) moves @best to the argmin.
    assert not promote(direct, name, v1, "fid_final", "min").moved and _best(direct, name) == v2

