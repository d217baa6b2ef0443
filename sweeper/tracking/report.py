"""`sweeper status` and `sweeper export`: a sweep's trials read back from its MLflow record.

Only MlflowClient calls (search_runs, get_metric_history) are used, so the same commands read the
local sqlite store, a cluster's `mlflow server`, and a sweep that is still running (its trial runs
are RUNNING, with the eval periods delivered so far). What a sweep's record holds: see
sweeper.tracking.runs (runs), sweeper.trial.delivery (one step per eval period) and sweeper.driver.run (parent
params and tags).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
import time
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from sweeper.tracking.outcomes import OUTCOME_TAG
from sweeper.tracking.runs import (
    GENERATION_TAG,
    PARENT_TAG,
    STEP_METRIC,
    TRIAL_TAG,
    check_reachable,
    default_tracking_uri,
)
from trainables.errors import BadInput

KIND_TAG, PROPOSED_BY_TAG, BEST_TRIAL_TAG = "sweeper.kind", "sweeper.proposed_by", "sweeper.best_trial"
# Where the config classes a parent's `sweeper.kind` names live (a sweep's own config, defined in
# its search-space file, is not importable here: its params' types are inferred from their text).
CONFIG_MODULES = ("trainables.config", "trainables.classifier.config")
PAGE_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class SweepRecord:
    """A sweep's latest parent run and its trial runs."""
    name: str
    parent: Run
    trials: list
    metric: str
    mode: str

    @property
    def state(self) -> str:
        return self.parent.data.tags.get(OUTCOME_TAG) or self.parent.info.status

    @property
    def searched(self) -> list[str]:
        return [k for k in self.parent.data.params.get("searched", "").split(",") if k]

    @property
    def kind(self) -> str:
        return self.parent.data.tags.get(KIND_TAG, "")


# -- reading the record ------------------------------------------------------------------------

def connect(uri: str | None = None) -> tuple[MlflowClient, bool]:
    """(client, whether the store exists): a local store nobody has written yet is not created
    just by looking at it."""
    uri = uri or default_tracking_uri()
    check_reachable(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return MlflowClient(uri), False
    return MlflowClient(uri), True


def latest_sweep(client: MlflowClient, name: str) -> SweepRecord:
    experiment = client.get_experiment_by_name(name)
    parents = _parent_runs(client, experiment.experiment_id) if experiment is not None else []
    if not parents:
        raise BadInput(f"no sweep named {name!r} in the MLflow store {client.tracking_uri}")
    return _record(client, name, parents[0])


def known_sweeps(client: MlflowClient) -> list[SweepRecord]:
    """The latest run of every sweep in the store, oldest first."""
    records = []
    for experiment in _all_pages(lambda token: client.search_experiments(max_results=PAGE_SIZE, page_token=token)):
        parents = _parent_runs(client, experiment.experiment_id)
        if parents:
            records.append(_record(client, experiment.name, parents[0]))
    return sorted(records, key=lambda r: r.parent.info.start_time)


def _parent_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """The sweep's parent runs, latest first (one per `sweeper run`; a resume reuses its own)."""
    runs = _search(client, experiment_id, f"tags.`{KIND_TAG}` LIKE '%'", order_by=["attributes.start_time DESC"])
    return [r for r in runs if PARENT_TAG not in r.data.tags]


def _record(client: MlflowClient, name: str, parent: Run) -> SweepRecord:
    metric, mode = metric_and_mode(parent)
    trials = [r for r in _search(client, parent.info.experiment_id,
                                 f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'") if TRIAL_TAG in r.data.tags]
    return SweepRecord(name, parent, trials, metric, mode)


def metric_and_mode(parent: Run) -> tuple[str, str]:
    """The parent's `metric` param, e.g. "fid (min)" -> ("fid", "min")."""
    text = parent.data.params.get("metric", "")
    match = re.fullmatch(r"(.+) \((min|max)\)", text)
    if match is None:
        raise BadInput(f"sweep run {parent.info.run_id} has no `metric` param like 'fid (min)' (got {text!r})")
    return match.group(1), match.group(2)


def _search(client: MlflowClient, experiment_id: str, filter_string: str, order_by=None) -> list[Run]:
    return _all_pages(lambda token: client.search_runs(
        [experiment_id], filter_string=filter_string, max_results=PAGE_SIZE, order_by=order_by, page_token=token))


def _all_pages(search) -> list:
    items, token = [], None
    while True:
        page = search(token)
        items += list(page)
        token = page.token
        if not token:
            return items


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """step -> value; where a step was logged twice, the later value."""
    return {step: value for step, (value, _) in timed_history(client, run_id, key).items()}


def timed_history(client: MlflowClient, run_id: str, key: str) -> dict[int, tuple[float, int]]:
    """step -> (value, when MLflow received it, ms); where a step was logged twice, the later."""
    return {int(m.step): (float(m.value), int(m.timestamp))
            for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))}


# -- one row per trial -------------------------------------------------------------------------

def _period_metrics(sweep: SweepRecord) -> set[str]:
    """What the trials logged per eval period: not MLflow's system metrics (`system/...`), whose
    steps count samples every few seconds, not eval periods (MLflow's System metrics tab shows them)."""
    return {k for run in sweep.trials for k in run.data.metrics if not k.startswith("system/")}


def trial_rows(client: MlflowClient, sweep: SweepRecord) -> tuple[list[dict], dict[str, type]]:
    """(rows best first, column -> type): id, run, state, who proposed it, eval periods done, best
    and last value of the sweep's metric, the latest value of every other metric (kimg, img_per_s,
    the final re-measurement such as fid_final when it was made) and every param (`params.<key>`)."""
    param_types = typed_param_columns(sweep)
    metric_keys = sorted(_period_metrics(sweep) - {STEP_METRIC, sweep.metric})
    best, last = f"best_{sweep.metric}", f"last_{sweep.metric}"
    types = {"trial_id": str, "run_id": str, "generation": int, "state": str, "proposed_by": str, "eval_periods": int,
             best: float, last: float, **{k: float for k in metric_keys},
             **{f"params.{k}": t for k, t in param_types.items()}}
    rows = []
    for run in sweep.trials:
        values = history(client, run.info.run_id, sweep.metric)
        row = {"trial_id": run.data.tags[TRIAL_TAG], "run_id": run.info.run_id,
               # A population member (PBT) has a run per generation (sweeper.tracking.lineage).
               "generation": int(run.data.tags.get(GENERATION_TAG, 0)), "state": trial_state(run),
               "proposed_by": run.data.tags.get(PROPOSED_BY_TAG),
               "eval_periods": int(run.data.metrics.get(STEP_METRIC, 0)),
               best: best_value(values.values(), sweep.mode),
               last: values[max(values)] if values else math.nan,
               **{k: run.data.metrics.get(k, math.nan) for k in metric_keys},
               **{f"params.{k}": typed(run.data.params.get(k), t) for k, t in param_types.items()}}
        rows.append(row)
    return sort_best_first(rows, best, sweep.mode), types


def trial_state(run: Run) -> str:
    """The outcome the driver set at the end; until then MLflow's status (RUNNING, KILLED, ...)."""
    return run.data.tags.get(OUTCOME_TAG) or run.info.status


def best_value(values, mode: str) -> float:
    # NaN is what a diverged period may log: never the best, and a trial with only NaN has none.
    numbers = [v for v in values if not math.isnan(v)]
    if not numbers:
        return math.nan
    return min(numbers) if mode == "min" else max(numbers)


def sort_best_first(rows: list[dict], column: str, mode: str) -> list[dict]:
    def key(row):
        value = row[column]
        missing = value is None or math.isnan(value)
        return (missing, 0.0 if missing else (value if mode == "min" else -value), row["trial_id"])
    return sorted(rows, key=key)


# -- one row per trial and eval period ---------------------------------------------------------

def step_rows(client: MlflowClient, sweep: SweepRecord) -> tuple[list[dict], dict[str, type]]:
    """(rows, column -> type): for each trial and eval period, every metric logged at that step
    (the final re-measurement is logged at the step of the checkpoint it measured)."""
    metric_keys = sorted(_period_metrics(sweep) - {STEP_METRIC})
    types = {"trial_id": str, "run_id": str, STEP_METRIC: int, **{k: float for k in metric_keys}}
    rows = []
    for run in sorted(sweep.trials, key=lambda r: r.data.tags[TRIAL_TAG]):
        histories = {k: history(client, run.info.run_id, k) for k in run.data.metrics if k in metric_keys}
        for step in sorted({s for values in histories.values() for s in values}):
            rows.append({"trial_id": run.data.tags[TRIAL_TAG], "run_id": run.info.run_id, STEP_METRIC: step,
                         **{k: histories.get(k, {}).get(step, math.nan) for k in metric_keys}})
    return rows, types


# -- params: MLflow keeps text, the export has typed columns ---------------------------------------

def typed_param_columns(sweep: SweepRecord) -> dict[str, type]:
    """param -> bool, int, float or str: the config field's type where the sweep's config class is
    known, else what every trial's text of it reads as."""
    declared = config_field_types(sweep.kind)
    keys = sorted({k for run in sweep.trials for k in run.data.params})
    return {k: declared.get(k) or inferred_type([run.data.params.get(k) for run in sweep.trials]) for k in keys}


def config_field_types(kind: str) -> dict[str, type]:
    from trainables.config import Config, field_types

    for module in CONFIG_MODULES:
        cls = getattr(importlib.import_module(module), kind, None)
        if isinstance(cls, type) and issubclass(cls, Config) and dataclasses.is_dataclass(cls):
            # A field whose default is None or a tuple has no column type of its own: inferred instead.
            return {k: t for k, t in field_types(cls).items() if t in (bool, int, float, str)}
    return {}


def inferred_type(texts: list) -> type:
    texts = [t for t in texts if t is not None and t != "None"]
    if not texts:
        return str
    if all(re.fullmatch(r"[+-]?\d+", t) for t in texts):
        return int
    if all(t in ("True", "False") for t in texts):
        return bool
    if all(_is_float(t) for t in texts):
        return float
    return str


def typed(text: str | None, kind: type):
    """MLflow's text of a param (str(value)) as a value of `kind`; None where it is missing or is
    not one (e.g. "None" for an optional field)."""
    if text is None or kind is str:
        return text
    if kind is bool:
        return {"True": True, "False": False}.get(text)
    try:
        return kind(text)
    except ValueError:
        return None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- the commands ------------------------------------------------------------------------------

def status(name: str | None, uri: str | None = None) -> str:
    client, exists = connect(uri)
    if name is None:
        return sweeps_text(client, known_sweeps(client) if exists else [])
    if not exists:
        raise BadInput(f"no sweep named {name!r}: no MLflow store at {client.tracking_uri} (run a sweep here, "
                       f"or set MLFLOW_TRACKING_URI)")
    sweep = latest_sweep(client, name)
    return status_text(sweep, *trial_rows(client, sweep))


def status_text(sweep: SweepRecord, rows: list[dict], types: dict) -> str:
    started = _time(sweep.parent.info.start_time)
    planned = sweep.parent.data.params.get("num_samples", "?")
    trials = len({row["trial_id"] for row in rows})
    runs = f" ({len(rows)} runs: one per generation of each member)" if len(rows) > trials else ""
    header = (f"sweep {sweep.name}: {sweep.state}, started {started} (parent run {sweep.parent.info.run_id}); "
              f"{trials} of {planned} trials started{runs}; best {sweep.metric} ({sweep.mode}) first")
    metric_columns = ([f"best_{sweep.metric}", f"last_{sweep.metric}"] + (["img_per_s"] if "img_per_s" in types else [])
                      + final_metrics(sweep))
    param_columns = [f"params.{k}" for k in sweep.searched]
    titles = ["trial", "state", "periods", *metric_columns, *sweep.searched]
    table = [[row["trial_id"] + (f"/g{row['generation']}" if row["generation"] else ""), row["state"], row["eval_periods"], *(row[c] for c in metric_columns),
              *(row.get(c) for c in param_columns)] for row in rows]
    best_trial = sweep.parent.data.tags.get(BEST_TRIAL_TAG)
    footer = [f"winner: trial {best_trial}"] if best_trial else []
    return "\n".join([header, "", text_table(titles, table), *footer])


def sweeps_text(client: MlflowClient, sweeps: list[SweepRecord]) -> str:
    if not sweeps:
        return f"no sweeps in the MLflow store {client.tracking_uri}"
    titles = ["sweep", "started", "state", "trials", "metric", "best", "final"]
    table = []
    for sweep in sweeps:
        best = best_value([v for run in sweep.trials for v in history(client, run.info.run_id, sweep.metric).values()],
                          sweep.mode)
        table.append([sweep.name, _time(sweep.parent.info.start_time), sweep.state,
                      len({run.data.tags[TRIAL_TAG] for run in sweep.trials}),
                      f"{sweep.metric} ({sweep.mode})", best, final_text(sweep)])
    return "\n".join([text_table(titles, table), "", "one sweep's trials: python -m sweeper status NAME"])


def final_text(sweep: SweepRecord) -> str | None:
    """The winner's re-measured number, as the driver logged it on the parent run."""
    metrics = sweep.parent.data.metrics
    return ", ".join(f"{k} {_cell(metrics[k])}" for k in final_metrics(sweep)) or None


def final_metrics(sweep: SweepRecord) -> list[str]:
    """The number that picked the winner (fid_final, test_acc), where the final evaluation made
    one: the driver logs it on the measured trials' runs and the winner's value on the parent run
    (among the kind's other summary metrics, e.g. a baseline's)."""
    trial_metrics = {k for run in sweep.trials for k in run.data.metrics}
    return sorted(k for k in sweep.parent.data.metrics if k in trial_metrics)


def export(name: str, output: str, *, steps: bool = False, uri: str | None = None) -> str:
    """Writes the sweep's trials (or, with `steps`, its eval periods) to Parquet, or CSV for a
    `.csv` path; returns a line saying what it wrote."""
    client, exists = connect(uri)
    if not exists:
        raise BadInput(f"no sweep named {name!r}: no MLflow store at {client.tracking_uri}")
    sweep = latest_sweep(client, name)
    rows, types = step_rows(client, sweep) if steps else trial_rows(client, sweep)
    table = arrow_table(rows, types)
    write_table(table, Path(output))
    return f"wrote {table.num_rows} rows x {table.num_columns} columns ({'eval periods' if steps else 'trials'} of sweep {name}) to {output}"


def arrow_table(rows: list[dict], types: dict[str, type]):
    import pyarrow as pa

    arrow_types = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    schema = pa.schema([pa.field(column, arrow_types[kind]) for column, kind in types.items()])
    return pa.Table.from_pylist(rows, schema=schema)


def write_table(table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        import pyarrow.csv

        pyarrow.csv.write_csv(table, path)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, path)


# -- text --------------------------------------------------------------------------------------

def text_table(titles: list[str], rows: list[list]) -> str:
    cells = [titles] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(titles))]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(titles))]
    lines = ["  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()
             for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value) if value != "" else '""'  # an empty string param would leave a hole in its column


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _time(millis: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(millis / 1000)) if millis else "-"


VIEW_KEY = "sweeper"


def save_runs_view(client: MlflowClient, sweep: SweepRecord) -> str:
    """The sweep's runs table as MLflow's UI should open it, saved where its Share button saves a view
    (an experiment tag the UI reads for `?viewStateShareKey=`): the final metric (fid_final), the
    best per-eval value so far (`fid_best`, the trials' objective: the `fid` column is each trial's
    latest), FID, KID, kimg and the searched params as columns, ordered by the final metric where
    one was measured, else by the best so far. The URL from MLflow's root is returned. Column choices
    are otherwise kept only in the browser; this tag's format is MLflow's own, undocumented
    (tests/test_ui_browser.py notices if it changes)."""
    final, measured = final_metrics(sweep), {k for run in sweep.trials for k in run.data.metrics}
    best_so_far = [k for k in (f"{sweep.metric}_best", sweep.metric) if k in measured][:1]
    metrics = [k for k in dict.fromkeys([*final, *best_so_far, sweep.metric, "kid", "kimg"]) if k in measured]
    view = {"orderByKey": f"metrics.`{(final or best_so_far or [sweep.metric])[0]}`", "orderByAsc": sweep.mode == "min",
            "selectedColumns": [f"metrics.`{k}`" for k in metrics] + [f"params.`{k}`" for k in sweep.searched]}
    experiment_id = sweep.parent.info.experiment_id
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(view))
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
