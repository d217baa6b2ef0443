"""What a sweep leaves beside its Tune experiment so that `sweeper resume` can continue it.

A sweep's Tune experiment lives in `<storage>/<sweep name>-<start time>/` (local, s3://, gs://).
Next to Tune's own state the driver writes, before the first trial starts:

- `sweeper.json`: the sweep's name, file, status (running, finished, interrupted, failed) and its
  MLflow store, experiment and parent run, readable by a person;
- `sweep.pkl`: the resolved Sweep (config, space, trainable, as cloudpickle sends them to trials),
  so a resume runs exactly the sweep that started, even if its file changed since.

A driver killed outright leaves `running`; `resume` takes any sweep that is not `finished` and
that Tune can restore (`Tuner.can_restore`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time

import pyarrow.fs
from ray import cloudpickle, tune

from sweeper.driver.moved import old_module_names
from trainables.cache import write_whole
from trainables.errors import BadInput

log = logging.getLogger("sweeper")

STATE_FILE, SWEEP_FILE = "sweeper.json", "sweep.pkl"
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
    fs, path = pyarrow.fs.FileSystem.from_uri(state.path)
    write_whole(fs, f"{path}/{STATE_FILE}", json.dumps(dataclasses.asdict(state), indent=2).encode())
    return state


def recorded_sweep(state: SweepState):
    """The Sweep as the driver recorded it when the sweep started (also one an older sweeper wrote)."""
    fs, path = pyarrow.fs.FileSystem.from_uri(state.path)
    with fs.open_input_stream(f"{path}/{SWEEP_FILE}") as f, old_module_names():
        return cloudpickle.loads(f.readall())


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
