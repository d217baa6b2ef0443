"""What promotion-based successive halving decided (sweeper.search.promotion), in MLflow.

Each trial's run gets a `sweeper.rungs` tag: at every rung it reached, its objective value, the
rung's cutoff (the worst value promoted from it: a trial stopped there did worse) and the decision
(promoted, stopped: paused there and never promoted, completed: reached max_t), e.g.
`2: 231.4 (cutoff 240.1) promoted; 6: 118.2 completed`. The parent
gets `rungs.json` (every record) and, for each pair of consecutive rungs, the Spearman rank
correlation of the trials' values at both (`rank_corr.<r_i>_<r_j>`, from 3 trials up): near 1, the
early rung ranked configurations as the later one did and halving was safe; near 0 or below, early
FID did not predict late FID, and a longer first rung (Promotion(first_rung=...)) would waste less.
"""
from __future__ import annotations

import json
import math

from scipy.stats import spearmanr

PROMOTED, STOPPED, COMPLETED = "promoted", "stopped", "completed"


def decisions(state: dict) -> list[dict]:
    """One row per trial and rung it was recorded at: bracket, rung (eval periods), value, the
    rung's cutoff (None where none was promoted), decision."""
    rows = []
    last = len(state["rungs"]) - 1
    worst = max if state.get("mode", "min") == "min" else min
    for s, rungs in enumerate(state["records"]):
        for k, recorded in enumerate(rungs):
            promoted = set(state["promoted"][s][k])
            went_on = [v for t, v in recorded.items() if t in promoted and _finite(v)]
            cutoff = worst(went_on) if went_on and k < last else None
            for trial_id, value in recorded.items():
                decision = COMPLETED if k == last else PROMOTED if trial_id in promoted else STOPPED
                rows.append({"trial_id": trial_id, "bracket": s, "rung": state["rungs"][k], "value": value,
                             "cutoff": cutoff, "decision": decision})
    return rows


def rank_correlations(state: dict) -> dict[str, float]:
    """Spearman's rho between consecutive rungs' values, over the trials recorded at both."""
    out = {}
    rungs = state["rungs"]
    for k in range(len(rungs) - 1):
        pairs = [(rungs_[k][t], rungs_[k + 1][t]) for rungs_ in state["records"] for t in rungs_[k]
                 if t in rungs_[k + 1] and _finite(rungs_[k][t]) and _finite(rungs_[k + 1][t])]
        if len(pairs) >= 3:
            rho = spearmanr(*zip(*pairs)).statistic
            if _finite(rho):
                out[f"rank_corr.{rungs[k]}_{rungs[k + 1]}"] = float(rho)
    return out


def log_rungs(client, parent_run_id: str, runs: dict[str, str], state: dict, timestamp: int | None = None) -> list[str]:
    """Tags on the trials' runs (`runs`: trial id -> run id), rungs.json and the correlations on the
    parent (at `timestamp`, ms; None: now); returns the console lines."""
    rows = decisions(state)
    by_trial: dict[str, list[str]] = {}
    for row in rows:
        cutoff = f" (cutoff {row['cutoff']:.4g})" if row["cutoff"] is not None else ""
        by_trial.setdefault(row["trial_id"], []).append(f"{row['rung']}: {row['value']:.4g}{cutoff} {row['decision']}")
    for trial_id, parts in by_trial.items():
        if trial_id in runs:
            client.set_tag(runs[trial_id], "sweeper.rungs", "; ".join(parts))
    client.log_text(parent_run_id, json.dumps({"rungs": state["rungs"], "eta": state["eta"], "decisions": rows},
                                              indent=1), "rungs.json")
    correlations = rank_correlations(state)
    for key, value in correlations.items():
        client.log_metric(parent_run_id, key, value, timestamp=timestamp)
    counts = ", ".join(f"{sum(r['rung'] == rung for r in rows)} at {rung}" for rung in state["rungs"])
    lines = [f"rungs: {counts} eval periods"]
    if correlations:
        lines.append("rank correlation between rungs (did early rank predict later?): " +
                     ", ".join(f"{k.split('.', 1)[1].replace('_', '->')} {v:+.2f}" for k, v in correlations.items()))
    return lines


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
