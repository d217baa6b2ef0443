"""The sweep's winner published: its best checkpoint logged as a model of its trial's run,
registered as `<sweep>-<kind>`, with the kind's lineage files in that run (a generator's record of
its training images, sweeper.kinds.generators), and `@best` pointed at the best version on its footing
(sweeper.tracking.registry decides; where the registry fails, @best is left alone and the console,
the run's tags and the summary say "not updated")."""
from __future__ import annotations

import dataclasses

import pandas as pd

from sweeper.driver.final import Candidate
from sweeper.driver.running import Running
from sweeper.tracking.lineage import TABLE_FILE as LINEAGE_TABLE
from sweeper.tracking.lineage import schedule_json
from sweeper.tracking.registry import model_name, promote, tag_version
from sweeper.trial.lineage import Lineage, read_lineage

SCHEDULE_FILE = "schedule.json"


def register(run: Running, table: pd.DataFrame, winner: Candidate) -> dict:
    """The winner as a new registered version; returns the summary's model, version and alias decision."""
    kind, row = run.kind, table[table["trial_id"] == winner.trial_id].iloc[0]
    name = model_name(run.sweep.name, kind.model_kind, run.quick)
    measured = {k: f"{row[k]:.6g}" for k in table.attrs.get("final_metrics", [kind.final_metric])}
    tags = {**measured, "sweeper.trial_id": winner.trial_id, "sweeper.eval_period": winner.period,
            "sweeper.sweep_run_id": run.tracking.parent_run_id,
            **{f"sweeper.{k}": v for k, v in run.inputs.params.items()}}
    number = f"{kind.final_metric} {row[kind.final_metric]:.4g} ({run.inputs.measured_on})"
    client = run.tracking.client()
    with winner.checkpoint.as_directory() as directory:
        run_id = model_run_id(row["run_id"], directory)
        schedule = schedule_of(run, winner, read_lineage(directory))
        version = kind.log_model(run.tracking, run_id, winner.config, directory, name)
    if schedule is not None:
        # The model's whole schedule, so that it can be trained again without a population.
        client.log_dict(run_id, schedule, SCHEDULE_FILE)
        tags.update({"sweeper.schedule": f"runs:/{run_id}/{SCHEDULE_FILE}",
                     "sweeper.lineage": f"runs:/{run.tracking.parent_run_id}/{LINEAGE_TABLE}"})
    # Before the tags: a version on a footing (one that can become @best) always has its lineage.
    for path, text in run.inputs.lineage.items():
        client.log_text(run_id, text, path)
    tag_version(client, name, version, tags=tags, footing=run.inputs.footing,
                description=f"Winner of sweep {run.sweep.name} (trial {winner.trial_id}): {number}, checkpoint of "
                            f"eval period {winner.period}.")
    why = promote(client, name, version, kind.final_metric, kind.final_mode).why  # "not updated: ..." on a failure
    print(f"models:/{name}@best {why}", flush=True)
    parent = run.tracking.parent_run_id
    client.set_tag(parent, "sweeper.registered_model", f"{name}/{version}")
    # The run page's description: a link to the registered version (the UI lists only models logged
    # by the run itself, and the winner was logged by its trial's run).
    client.set_tag(parent, "mlflow.note.content",
                   f"Winner: trial {winner.trial_id}, {number}. Registered as "
                   f"[models:/{name}/{version}](#/models/{name}/versions/{version}); @best {why}.")
    client.set_tag(parent, "sweeper.best_alias_decision", why)
    return {"model": name, "model_version": version, "alias_decision": why}


def model_run_id(table_run_id: str, checkpoint_dir) -> str:
    """The run the winner's checkpoint was trained in: its trial's run, or, for a population member,
    the run of the generation that wrote it (its latest generation's may have trained on since)."""
    lineage = read_lineage(checkpoint_dir)
    return lineage.last["run_id"] if lineage is not None else table_run_id


def schedule_of(run: Running, winner: Candidate, lineage: Lineage | None) -> dict | None:
    """schedule.json: the winner's checkpoint's lineage as periods and values, on the config its
    first segment started from (None outside a population)."""
    if lineage is None:
        return None
    segments = list(lineage.segments)
    chain = [{**segment, "to_period": (segments[i + 1]["from_period"] - 1 if i + 1 < len(segments)
                                       else lineage.eval_period)} for i, segment in enumerate(segments)]
    start = {**dataclasses.asdict(winner.config), **chain[0]["values"]}
    return schedule_json(chain, start, run.sweep.config.steps_per_eval)
