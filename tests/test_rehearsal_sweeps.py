"""Rehearsal learners in real sweeps: every one runs as a trial, and PBT moves buffer_size
along a ladder through the trainable (adapt), with the results in the tables and the report."""

import json

import pandas as pd

from lifelab.analysis.tables import load
from lifelab.searches.launch import run_sweep
from lifelab.searches.spec import spec_from_dict

STREAM = {"kind": "split", "tasks": 2, "scenario": "class", "steps_per_task": 20}
LEARNERS = ["er", "der", "derpp", "agem", "icarl", "gdumb", "lwf"]


def test_every_rehearsal_learner_runs_as_a_trial(ray_session, short_tmp):
    spec = spec_from_dict({"name": "replay-all", "learner": {"grid": LEARNERS},
                           "stream": STREAM, "config": {"hidden": [16], "buffer_size": 40}})
    sweep_uri, results = run_sweep(spec, storage=short_tmp, progress_s=0)
    assert len(results) == len(LEARNERS) and not any(r.error for r in results)
    tables = load(sweep_uri)
    assert sorted(tables.trials.learner) == sorted(LEARNERS)
    assert set(tables.trials.status) == {"TERMINATED"}
    final = tables.metrics[tables.metrics.name == "val_acc_avg"]
    assert final.groupby("trial_id", observed=True).iteration.max().eq(2).all()
    memory = tables.metrics[tables.metrics.name == "buffer_bytes"]
    assert set(tables.trials.set_index("trial_id").learner[memory.trial_id.astype(str)]) \
        == set(LEARNERS) - {"lwf"}                         # lwf keeps no memory


def test_pbt_moves_buffer_size_along_its_ladder(ray_session, short_tmp):
    spec = spec_from_dict({
        "name": "replay-pbt", "learner": "er",
        "stream": {**STREAM, "tasks": 3}, "config": {"hidden": [16], "buffer_size": 60,
                                                     "steps_per_round": 10},
        "search": {"scheduler": "pbt", "samples": 2, "perturbation_interval": 1, "synch": True,
                   "quantile_fraction": 0.5, "resample_probability": 0.0,
                   "mutations": {"buffer_size": [30, 60, 90]}},
        "stop": {"rounds": 6}})
    sweep_uri, results = run_sweep(spec, storage=short_tmp, progress_s=0)
    assert not any(r.error for r in results)
    events = pd.read_parquet(f"{sweep_uri}/results/events")
    assert len(events) >= 1
    sizes = [json.loads(e)["buffer_size"] for e in events.sort_values("iteration").new_config_json]
    assert set(sizes) <= {30, 60, 90} and sizes[0] in (30, 90)   # the first: a rung from 60
    metrics = pd.read_parquet(f"{sweep_uri}/results/metrics")
    assert (metrics[metrics.name == "train_loss"].value.notna()).all()
