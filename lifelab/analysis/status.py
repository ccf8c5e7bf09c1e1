"""`lifelab status`: where each trial of a sweep stands, readable while the sweep runs."""

from __future__ import annotations

import pandas as pd

from lifelab.analysis.selection import VAL, base_name, is_cl_metric, selected_on_test, twin
from lifelab.platform.config import SearchSettings
from lifelab.platform.store import ResultStore, read_spec


def sweep_status(sweep_uri: str) -> pd.DataFrame:
    """One row per trial, best first by the sweep's metric: learner, status, last iteration,
    the metric and its twin on the other split (the test `acc_avg` beside `val_acc_avg`),
    error. Built from the live rows of the store, so a running sweep shows progress.

    A continual-learning metric shows its last reported value: its value at the end of the
    stream once the trial finished (its best round would be the first task's accuracy). Any
    other metric (one without a `val_` twin, e.g. a learner's own loss ratio, a fresh evaluation
    of the current state each round) shows its last value and its best so far, `best_<metric>`,
    and ranks by the best."""
    metric, mode = _metric(read_spec(sweep_uri))
    store = ResultStore(sweep_uri)
    trials = store.read("trials")[["trial_id", "learner", "status", "error"]]
    # only the metric and its possible twins are read: the status of a big sweep stays fast
    base = base_name(metric)
    values = store.read("metrics", names={metric, base, VAL + base})
    names = set(values.name)
    cl = is_cl_metric(metric, names)
    other = twin(metric, names)
    shown = [metric, *([other] if other in names else [])]
    values = values[values.name.isin(shown)].sort_values("iteration", kind="stable")
    last = (values.drop_duplicates(["trial_id", "name"], keep="last")   # categoricals: cheap
            .astype({"trial_id": str, "name": str})
            .pivot(index="trial_id", columns="name", values="value"))
    reached = values.groupby("trial_id", observed=True).iteration.max()
    per_trial = last.reindex(columns=shown).assign(
        iteration=reached.set_axis(reached.index.astype(str)))
    rank = metric
    if not cl:
        rank = f"best_{metric}"
        mine = values[values.name == metric].groupby("trial_id").value
        per_trial[rank] = mine.max() if mode == "max" else mine.min()
    table = trials.merge(per_trial.reset_index(), on="trial_id", how="outer")
    table["iteration"] = table["iteration"].fillna(0).astype(int)
    table = table.sort_values(rank, ascending=(mode == "min"), na_position="last",
                              kind="stable")
    columns = ["trial_id", "learner", "status", "iteration", *shown,
               *([rank] if not cl else []), "error"]
    return table[columns].reset_index(drop=True)


def status_text(sweep_uri: str) -> str:
    spec = read_spec(sweep_uri)
    table = sweep_status(sweep_uri)
    if table.empty:
        return f"sweep {spec.get('name')}: no trial has started yet ({sweep_uri})"
    counts = table["status"].fillna("UNKNOWN").value_counts()
    summary = ", ".join(f"{n} {status.lower()}" for status, n in counts.items())
    metric, mode = _metric(spec)
    shown = [c for c in table.columns[4:] if c not in ("error", metric)]
    beside = f", {', '.join(shown)} beside it" if shown else ""
    warning = " (selected on test data)" if selected_on_test(spec, table.columns) else ""
    lines = [f"sweep {spec.get('name')}: {len(table)} trials ({summary}); ranked by {metric} "
             f"({mode}){warning}{beside}",
             table.fillna({"error": ""}).to_string(index=False,
                                                    float_format=lambda v: f"{v:.4g}")]
    return "\n".join(lines)


def _metric(spec: dict) -> tuple[str, str]:
    search = spec.get("search") or {}
    return (str(search.get("metric") or SearchSettings.metric),
            str(search.get("mode") or SearchSettings.mode))
