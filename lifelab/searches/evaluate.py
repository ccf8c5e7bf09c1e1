"""Evaluate what a search selected on fresh seeds: an evaluation sweep linked to the search.

The search selects on validation data (the best trial by its spec's metric at the end of its
run); the evaluation sweep re-runs that choice from scratch on N fresh seeds on the evaluation
stream, and its test metrics, as mean and SEM over those independent runs, are the numbers to
report. For a PBT or PB2 search the choice is a schedule, not a config: the hyperparameters the
selected trial's final state was trained with at each iteration, along its ancestry of exploits,
replayed in every evaluation trial (`schedule` in the evaluation spec).

The evaluation sweep is an ordinary sweep at `<storage>/<search>-eval` (status, report, resume
work on it); its spec records what it evaluates under `evaluates`.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from lifelab.errors import ConfigError
from lifelab.platform.config import POPULATION_SCHEDULERS, SweepSpec, is_distribution
from lifelab.searches.launch import read_sweep_spec, storage_uri
from lifelab.trainables.registry import learner_class

EVAL_SUFFIX = "-eval"


def selected_trial(metrics: pd.DataFrame, metric: str, mode: str) -> tuple[str, float]:
    """(trial_id, value): the trial whose last reported `metric` is best. The last value, not the
    best over rounds: a continual learner's early rounds score fewer, easier tasks."""
    rows = metrics[(metrics.name == metric) & metrics.value.notna()]
    if rows.empty:
        raise ConfigError(f"no trial reported {metric}: run the search to the end first")
    last = rows.sort_values("iteration").groupby("trial_id", observed=True).value.last()
    best = last.idxmax() if mode == "max" else last.idxmin()
    return str(best), float(last[best])


def evaluation_spec(search_uri: str, seeds: int, name: str | None = None) -> dict:
    """The spec of a sweep that re-runs the search's selection on `seeds` fresh seeds."""
    from lifelab.analysis.lineage import lineage_of
    from lifelab.analysis.tables import load

    spec = read_sweep_spec(search_uri)
    tables = load(search_uri)
    metric, mode = spec.search.metric, spec.search.mode
    trial_id, value = selected_trial(tables.metrics, metric, mode)
    row = tables.trials[tables.trials.trial_id == trial_id].iloc[0]
    cls = learner_class(row.learner)
    schedule = []
    if spec.search.scheduler in POPULATION_SCHEDULERS:
        segments = lineage_of(tables, tables.sweeps[0]).segments(trial_id)
        configs = _segment_configs(segments)
        config = current = _own(cls, configs[0][1])
        for start, seg_config in configs[1:]:        # segment (start, end]: from start + 1 on
            changes = {k: v for k, v in _own(cls, seg_config).items() if current.get(k) != v}
            if changes:
                schedule.append([start + 1, changes])
                current = {**current, **changes}
    else:
        config = _own(cls, json.loads(row.config_json))
    return {
        "name": name or f"{spec.name}{EVAL_SUFFIX}",
        "learner": str(row.learner),
        "stream": evaluation_stream(spec.stream, json.loads(row.config_json)["stream"]),
        "config": config, "schedule": schedule, "code": spec.code,
        "search": {"scheduler": "fifo", "samples": seeds, "metric": metric, "mode": mode,
                   "select_on_test": spec.search.select_on_test},
        "stop": {},                                     # to the end of the evaluation stream
        "resources": spec.resources,
        # fresh seeds: past every seed the search's trials used (seed + trial index)
        "seed": max(spec.seeds()) + len(tables.trials),
        "evaluates": {"sweep": search_uri, "trial": trial_id, "metric": metric,
                      "value": value, "protocol": spec.protocol,
                      "tuning_stream": spec.search_stream()},
    }


def run_evaluation(search_dir: str, seeds: int, name: str | None = None,
                   address: str | None = None, progress_s: float = 10.0):
    """Run the evaluation sweep of a finished search -> (sweep_uri, ResultGrid)."""
    from lifelab.searches.launch import run_sweep
    from lifelab.searches.spec import spec_from_dict

    search_uri = storage_uri(search_dir)
    spec: SweepSpec = spec_from_dict(evaluation_spec(search_uri, seeds, name))
    storage = search_uri.rstrip("/").rsplit("/", 1)[0]
    return run_sweep(spec, storage=storage, address=address, progress_s=progress_s)


def evaluation_stream(stream: dict, trial_stream: dict) -> dict:
    """The evaluation stream of the selected trial: the spec's stream, with the values the trial
    drew where the spec searched over stream keys (the trial itself may have run on a tuning
    stream, which differs in its tasks or seed)."""
    return {k: trial_stream[k] if is_distribution(v) else v for k, v in stream.items()}


def summary_lines(tables, metric: str) -> list[str]:
    """The evaluation's test metrics as mean ± SEM over its independent seeds."""
    name = metric[4:] if metric.startswith("val_") else metric
    names = [n for n in (name, "bwt", "forgetting") if n in set(tables.metrics.name)]
    last = (tables.metrics[tables.metrics.name.isin(names)].sort_values("iteration")
            .groupby(["trial_id", "name"], observed=True).value.last().unstack())
    lines = []
    for n in names:
        values = last[n].dropna()
        sem = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
        lines.append(f"  {n}: {values.mean():.4f} ± {sem:.4f} (test; mean ± SEM over "
                     f"{len(values)} seeds)")
    return lines


def _own(cls: type, config: dict) -> dict:
    return {k: v for k, v in config.items() if k in cls.params}


def _segment_configs(segments) -> list[tuple[int, dict]]:
    """(start iteration, config) of each segment of an ancestry, oldest first. A donor's
    config is the one its checkpoint was saved under (the exploit that copied it records it)
    when its own start config is unknown."""
    ordered = list(reversed(segments))               # oldest first
    out = []
    for i, seg in enumerate(ordered):
        config = seg.config
        if config is None and i + 1 < len(ordered) and ordered[i + 1].exploit is not None:
            config = ordered[i + 1].exploit.old_config
        if config is None:
            raise ConfigError(f"the config of trial {seg.trial_id} before iteration "
                              f"{seg.end} is not recorded: its schedule cannot be replayed")
        out.append((seg.start, config))
    return out
