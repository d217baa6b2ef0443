"""The winner's model as a registered MLflow model, and where the alias `best` points.

Every finished sweep registers its winner as a new version (the history stays browsable). `@best`
is then decided from the registry itself, never from what this process saw before: the version with
the best final number among ALL versions on the new version's footing (the tags that make two final
numbers comparable, listed in its `sweeper.footing` tag: for a generator the FID extractor's name,
weights sha256 and precision, the data, resolution, sample counts and draw; for a classifier the test
split and resolution); ties go to the older version. Decisions taken:

- Versions on another footing are never compared: if `@best` points to one, it stays there.
- Race-free without a lock: after setting the alias, the writer reads the registry again and repeats
  until the alias is the argmin of what it reads. Every writer finishes tagging its version before
  its first read, and the last read of the last writer to finish sees every version, so concurrent
  sweeps converge on the argmin over all of them whatever the interleaving.
- Only a successful read that lists no `best` alias means "no @best yet". Any error (a 503, a
  timeout) leaves the alias where it was, with a one-line warning, and the decision says
  "not updated".
"""
from __future__ import annotations

import logging
import math
from typing import NamedTuple

import mlflow
import numpy as np
import torch

ALIAS = "best"
DECISION_TAG = "sweeper.best_alias_decision"
FOOTING_TAG = "sweeper.footing"  # the comma-separated tag names that a version was measured on
# Rounds of set-then-verify before giving up: two suffice unless writers keep arriving meanwhile.
_ROUNDS = 5

log = logging.getLogger(__name__)


class Decision(NamedTuple):
    moved: bool  # @best points to this version now
    why: str  # one line, as the console and the summary print it after "@best "
    updated: bool = True  # False: the registry failed and @best was left where it was


def model_name(sweep_name: str, kind: str, quick: bool = False) -> str:
    """`<sweep>-generator`, `<sweep>-classifier`; `--quick` sweeps register apart, so a CPU-budget
    model never competes with real ones."""
    return f"{sweep_name}-quick-{kind}" if quick else f"{sweep_name}-{kind}"


def log_pt2_model(tracking, run_id: str, model, example: np.ndarray, *, name: str, registered_name: str) -> str:
    """Logs `model` into the run in MLflow's `pt2` format (torch.export: loading it back unpickles
    nothing but tensors) and registers it; returns the new version."""
    mlflow.set_tracking_uri(tracking.uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model, name=name, input_example=example, serialization_format="pt2",
            registered_model_name=registered_name,
            # Given explicitly: inferring them spawns a subprocess that re-imports the world.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    return str(info.registered_model_version)


def tag_version(client, name: str, version: str, *, tags: dict, footing: dict, description: str) -> None:
    """The version's tags; the footing tag written last, so that a version being tagged while another
    sweep decides @best is on no footing yet (and so never compared half-tagged)."""
    for key, value in {**tags, **footing}.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_model_version_tag(name, version, FOOTING_TAG, ",".join(sorted(footing)))
    client.update_model_version(name, version, description=description)


def promote(client, name: str, version: str, metric: str, mode: str) -> Decision:
    """Points `best` at the best version on `version`'s footing (see the module's docstring), records
    the decision on `version` (tag sweeper.best_alias_decision) and returns it."""
    try:
        decision = _converge(client, name, client.get_model_version(name, version), metric, mode)
    except Exception as exc:  # whatever failed (HTTP 503, timeout, refused), the alias was not changed by us
        decision = Decision(False, f"not updated: the registry failed ({_one_line(exc)}); @{ALIAS} left where it was",
                            updated=False)
    try:
        client.set_model_version_tag(name, version, DECISION_TAG, decision.why)
        unrecorded = ""
    except Exception as exc:
        unrecorded = f"; the decision not recorded on version {version} ({_one_line(exc)})"
    if unrecorded or not decision.updated:  # one line for one outage, whichever calls it failed
        log.warning("models:/%s@%s %s%s", name, ALIAS, decision.why, unrecorded)
    return decision


def footing_of(tags: dict) -> dict | None:
    """The footing a version was measured on (tag -> value), or None: not tagged (yet), on no footing."""
    keys = [key for key in tags.get(FOOTING_TAG, "").split(",") if key]
    return {key: tags.get(key) for key in keys} if keys else None


def describe_footing(footing: dict | None) -> str:
    """The footing in one line: tag names without "sweeper.", 64-hex digests cut to 12 (the tags have them whole)."""
    if not footing:
        return "[none]"
    def short(value):
        return f"{value[:12]}..." if isinstance(value, str) and len(value) == 64 else value
    return "[" + ", ".join(f"{key.removeprefix('sweeper.')}={short(value)}" for key, value in sorted(footing.items())) + "]"


def _converge(client, name: str, new, metric: str, mode: str) -> Decision:
    value, footing = _number(new.tags, metric), footing_of(new.tags)
    if value is None:
        return Decision(False, f"not moved: this version has no finite {metric}")
    if footing is None:
        return Decision(False, f"not moved: this version has no footing tag ({FOOTING_TAG})")
    first_alias = None
    for round_ in range(_ROUNDS):
        alias = client.get_registered_model(name).aliases.get(ALIAS)  # None only on a read that succeeded
        alias = None if alias is None else str(alias)  # stores differ: int from sqlite, str over REST
        versions = {str(v.version): v for v in _versions(client, name)}
        versions.setdefault(str(new.version), new)
        first_alias = alias if round_ == 0 else first_alias
        if alias is not None and alias not in versions:
            return Decision(False, f"not moved: @{ALIAS} points to version {alias}, which the registry does not list")
        if alias is not None and footing_of(versions[alias].tags) != footing:
            return Decision(False, _another_footing(versions[alias], new.tags, footing))
        same = [v for v in versions.values() if footing_of(v.tags) == footing and _number(v.tags, metric) is not None
                and v.status in ("READY", None)]
        best = min(same, key=lambda v: ((1 if mode == "min" else -1) * _number(v.tags, metric), int(v.version)))
        if alias == str(best.version):
            before = versions.get(first_alias) if first_alias is not None else None
            return _settled(best, new, before, len(same), footing, metric, mode)
        client.set_registered_model_alias(name, ALIAS, best.version)
    return Decision(False, f"not updated: @{ALIAS} kept changing under concurrent sweeps for {_ROUNDS} rounds; "
                           f"it may not be the best on footing {describe_footing(footing)}", updated=False)


def _settled(best, new, before, n: int, footing: dict, metric: str, mode: str) -> Decision:
    """The decision in words, given the version @best pointed to when this decision began (`before`)."""
    word, extreme = ("below", "lowest") if mode == "min" else ("above", "highest")
    among = f"the {extreme} of {n} version{'s' if n > 1 else ''} on footing {describe_footing(footing)}"
    value, best_value = _number(new.tags, metric), _number(best.tags, metric)
    if str(best.version) != str(new.version):
        return Decision(False, f"not moved: {metric} {value:.4g} is not {word} version {best.version}'s "
                               f"{best_value:.4g}, {among}{_noise(new, best, metric)}")
    if before is None:
        return Decision(True, f"moved: {metric} {value:.4g}, {among} (no version had @{ALIAS} yet)")
    old = _number(before.tags, metric)
    if str(before.version) == str(new.version) or old is None:  # a concurrent decision got there first; or no number
        return Decision(True, f"moved: {metric} {value:.4g}, {among}")
    return Decision(True, f"moved: {metric} {value:.4g} {word} version {before.version}'s {old:.4g}, {among}"
                          f"{_noise(new, before, metric)}")


def _noise(new, other, metric: str) -> str:
    """Where both versions carry a 95% interval of `metric` (`<metric>_low`, `_high`: a test accuracy)
    and the two overlap: the difference is inside the noise, and the decision says so (it still
    follows the numbers: the footing's best by its measured value)."""
    intervals = [(_number(v.tags, f"{metric}_low"), _number(v.tags, f"{metric}_high")) for v in (new, other)]
    if any(None in interval for interval in intervals):
        return ""
    (low, high), (other_low, other_high) = intervals
    if low > other_high or other_low > high:
        return ""
    return (f"; a difference inside the noise: the 95% intervals [{low:.4g}, {high:.4g}] and version "
            f"{other.version}'s [{other_low:.4g}, {other_high:.4g}] overlap")


def _another_footing(current, new_tags: dict, footing: dict) -> str:
    theirs = footing_of(current.tags) or {}
    key = next(k for k in sorted(set(theirs) | set(footing)) if theirs.get(k) != footing.get(k))
    return (f"not moved: @{ALIAS} is version {current.version}, measured on another footing ({key} "
            f"{new_tags.get(key)} vs {current.tags.get(key)}), so the numbers do not compare; this version's "
            f"footing: {describe_footing(footing)}")


def _versions(client, name: str) -> list:
    """Every version of `name`, all pages, with their tags, as the registry has them now."""
    found, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _number(tags: dict, metric: str) -> float | None:
    try:
        value = float(tags.get(metric, "nan"))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _one_line(exc: Exception) -> str:
    """The error's first line; if long, its head and its tail, where requests puts the cause (the status)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text if len(text) <= 300 else f'{text[:140]} ... {text[-140:]}'}"
