"""What a sweep leaves beside its Tune experiment so that `sweeper resume` can continue it.

A sweep's Tune experiment lives in `<storage>/<sweep name>-<start time>/` (local, s3://, gs://).
Next to Tune's own state the driver writes, before the first trial starts:

- `sweeper.json`: the sweep's name, file, status (running, finished, interrupted, failed) and its
  MLflow store, experiment and parent run, readable by a person;
- `sweep.pkl`: the resolved Sweep (config, space, trainable, as cloudpickle sends them to trials),
  so a resume runs exactly the sweep that started, even if its file changed since.

A driver killed outright leaves `running`; `resume` takes any sweep that is not `finished` and
that Tune can restore (`Tuner.can_restore`).

**A resume repeats nothing that finished.** The steps after the trials write to MLflow, and a
second run of them would log `fid_final` twice and register a second model version. So each one
is recorded in `sweeper.json`'s `steps` as it finishes, with what it made, and a resume reuses the
record instead of running it again:

- `final_measured`: the final evaluation's numbers per trial (its files, e.g. a GAN's draw records
  or a classifier's figures, in `final_files.pkl` beside it), recorded before they are logged;
- `final_logged`: the trials whose measured numbers are logged to their runs, one at a time;
- `registered`: the winner's registered model version and the @best decision;
- `parent_metrics`, `summary`: the parent run's summary numbers, files and figures.

A driver killed inside a step (between two MLflow calls) leaves it unrecorded: it runs again on
resume. Its metrics are logged again with the timestamp recorded for them (`logged_at`), so each
stays one point in MLflow. For a registration that is a model version already made from the
winner's run: it is deleted and the registration done again (sweeper.driver.run), so one version
remains.

**Trials `resume` re-runs after they errored** (Tune's `resume_errored`) were told to the searcher
as FAIL. Optuna cannot tell a finished trial again, and Tune's ConcurrencyLimiter passes nothing on
for a trial it no longer counts as live, so their results would reach neither TPE nor the parameter
importances. `RetellRetried`, a Tune callback added on resume, hands each such trial's final result
to `SweepSearch.retell`, which adds it to the study as a new trial with the same params.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import sys
import time
import types

import pyarrow.fs
from ray import cloudpickle, tune
from ray.tune.utils import flatten_dict

from sweeper.compat import run_config_of
from sweeper.driver.loader import SPACE_MODULE_PREFIX
from sweeper.driver.moved import old_module_names
from trainables.cache import write_whole
from trainables.errors import BadInput

log = logging.getLogger("sweeper")

STATE_FILE, SWEEP_FILE, FINAL_FILES = "sweeper.json", "sweep.pkl", "final_files.pkl"
# The steps after the trials that a resume must not repeat (see the module's docstring).
FINAL_MEASURED, FINAL_LOGGED, REGISTERED, PARENT_METRICS, SUMMARY = (
    "final_measured", "final_logged", "registered", "parent_metrics", "summary")
LOGGED_AT = "logged_at"  # the time every metric of those steps is logged with (logged_at below)
RUNNING, FINISHED, INTERRUPTED, FAILED = "running", "finished", "interrupted", "failed"


@dataclasses.dataclass(frozen=True)
class SweepState:
    path: str                 # the Tune experiment: a local path or a URI
    name: str
    sweep_file: str
    quick: bool
    status: str
    started: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    # The finished steps after the trials, as recorded (step -> what it made). The one mutable part:
    # every copy of a state (dataclasses.replace) shares it, so a status written later keeps them.
    steps: dict = dataclasses.field(default_factory=dict)


def experiment_path(storage: str, run_name: str) -> str:
    """`<storage>/<run_name>`, keeping a URI's query (`s3://b/p?endpoint_override=...`) at the end."""
    base, sep, query = storage.partition("?")
    return f"{base.rstrip('/')}/{run_name}{sep}{query}"


def split_experiment_path(path: str) -> tuple[str, str]:
    """(storage, run name): the inverse of experiment_path."""
    base, sep, query = path.partition("?")
    storage, run_name = base.rsplit("/", 1)
    return storage + sep + query, run_name


def write_state(state: SweepState, sweep) -> None:
    fs, path = pyarrow.fs.FileSystem.from_uri(state.path)
    fs.create_dir(path, recursive=True)
    write_whole(fs, f"{path}/{SWEEP_FILE}", cloudpickle.dumps(sweep))
    write_whole(fs, f"{path}/{STATE_FILE}", json.dumps(dataclasses.asdict(state), indent=2).encode())


def set_status(state: SweepState, status: str) -> SweepState:
    state = dataclasses.replace(state, status=status)
    _write_state_file(state)
    return state


def _write_state_file(state: SweepState) -> None:
    fs, path = pyarrow.fs.FileSystem.from_uri(state.path)
    write_whole(fs, f"{path}/{STATE_FILE}", json.dumps(dataclasses.asdict(state), indent=2).encode())


def recorded(state: SweepState | None, step: str):
    """What a finished `step` made, as recorded; None if it has not finished (or no state is kept)."""
    return None if state is None else state.steps.get(step)


def record(state: SweepState | None, step: str, made) -> None:
    """`step` finished and made `made` (plain JSON data): written before the next step starts."""
    if state is None:
        return
    state.steps[step] = made
    _write_state_file(state)


def logged_at(state: SweepState | None) -> int:
    """The timestamp (ms since the epoch) every metric of the steps after the trials is logged with,
    recorded the first time it is asked for. A driver killed between an MLflow call and the record
    of its step logs the same numbers again on resume: with the same key, step, value and timestamp
    MLflow's store keeps them as one point (its SQL store skips a metric row it already holds), not two."""
    stamp = recorded(state, LOGGED_AT)
    if stamp is None:
        stamp = int(time.time() * 1000)
        record(state, LOGGED_AT, stamp)
    return stamp


def record_measured(state: SweepState | None, measured: dict) -> None:
    """The final evaluation's {trial id: (metrics, {file name: bytes})}: the files beside the state
    file first, so a recorded `final_measured` always has them."""
    if state is None:
        return
    fs, path = pyarrow.fs.FileSystem.from_uri(state.path)
    write_whole(fs, f"{path}/{FINAL_FILES}", pickle.dumps({t: files for t, (_, files) in measured.items()}))
    record(state, FINAL_MEASURED, {t: {k: float(v) for k, v in metrics.items()} for t, (metrics, _) in measured.items()})


def recorded_measured(state: SweepState | None) -> dict | None:
    """The final evaluation's results as `record_measured` kept them; None if it has not finished."""
    metrics = recorded(state, FINAL_MEASURED)
    if metrics is None:
        return None
    fs, path = pyarrow.fs.FileSystem.from_uri(state.path)
    with fs.open_input_stream(f"{path}/{FINAL_FILES}") as f:
        files = pickle.loads(f.readall())  # noqa: S301  the driver's own file, written just above
    return {t: (values, files.get(t, {})) for t, values in metrics.items()}


class RetellRetried(tune.Callback):
    """Tells the searcher again of each trial that finished after it was told FAIL (see the
    module's docstring); `SweepSearch.retell` ignores every other trial, and a second telling."""

    def __init__(self, searcher):
        self.searcher = searcher

    def on_trial_complete(self, iteration: int, trials: list, trial, **info):
        self.searcher.retell(trial.trial_id, flatten_dict(trial.last_result or {}))


def retell_retried(tuner: tune.Tuner, searcher) -> None:
    """Add `RetellRetried` to a restored Tuner's callbacks (once: a run config restored from a resumed
    sweep may carry one already)."""
    # Tuner.restore takes no callbacks; the run config it restored is the one `fit` uses.
    config = run_config_of(tuner)
    config.callbacks = [c for c in config.callbacks or [] if not isinstance(c, RetellRetried)] + [RetellRetried(searcher)]


def recorded_sweep(state: SweepState):
    """The Sweep as the driver recorded it when the sweep started (also one an older sweeper wrote),
    with what its file defined importable again (`_file_module_importable`)."""
    fs, path = pyarrow.fs.FileSystem.from_uri(state.path)
    with fs.open_input_stream(f"{path}/{SWEEP_FILE}") as f, old_module_names():
        sweep = cloudpickle.loads(f.readall())
    _file_module_importable(sweep)
    return sweep


def _file_module_importable(sweep) -> None:
    """Ray's OptunaSearch saves its state with plain pickle, which names a define-by-run space by
    its module: the search-space file's, a name only the driver that loaded the file had
    (sweeper.driver.loader). `sweep.pkl` holds the space (and a trainable the file defined) by
    value; a resumed driver puts each back under that module name, so the searcher's state loads.
    The module stays pickled by value, as the loader's is: trial processes have no such module."""
    for defined in (sweep.space, sweep.trainable):
        module = getattr(defined, "__module__", None) or ""
        if callable(defined) and module.startswith(SPACE_MODULE_PREFIX):
            restored = sys.modules.setdefault(module, types.ModuleType(module))
            setattr(restored, defined.__name__, defined)
            cloudpickle.register_pickle_by_value(restored)


def sweeps_in(storage: str) -> list[SweepState]:
    """Every sweep with a state file in `storage`, oldest first."""
    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage)
        entries = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except (OSError, pyarrow.ArrowInvalid) as e:
        raise BadInput(f"storage: cannot list {storage}: {str(e).splitlines()[0]}") from None
    states = []
    for entry in entries:
        if entry.type != pyarrow.fs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(f"{entry.path}/{STATE_FILE}") as f:
                fields = json.loads(f.readall())
        except (OSError, ValueError):
            continue  # not a sweeper experiment (or one from before resume existed)
        fields["path"] = experiment_path(storage, entry.base_name)
        states.append(SweepState(**fields))
    return sorted(states, key=lambda s: s.started)


def resumable(storage: str, name: str | None) -> SweepState:
    """The latest sweep (of that name, or of that experiment folder) that can be resumed."""
    known = [s for s in sweeps_in(storage) if name is None or name in (s.name, split_experiment_path(s.path)[1])]
    if not known:
        what = f"no sweep named {name!r}" if name else "no sweep"
        raise BadInput(f"resume: {what} in {storage} (pass --storage where it ran)")
    unfinished = [s for s in known if s.status != FINISHED]
    if not unfinished:
        raise AlreadyFinished(known[-1])
    latest = unfinished[-1]
    if not tune.Tuner.can_restore(latest.path):
        raise BadInput(f"resume: {latest.path} holds no Tune experiment state to restore "
                       f"(the driver stopped before the first trial started)")
    return latest


class AlreadyFinished(Exception):
    def __init__(self, state: SweepState):
        super().__init__(f"sweep {state.name} ({state.path}) finished; nothing to resume")
        self.state = state


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
