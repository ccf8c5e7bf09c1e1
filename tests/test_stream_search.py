"""One sweep over several streams, scenarios and seeds: choice/grid over stream keys and the
seed, validated before Ray starts, each trial on the stream and seed it drew."""

import json

import pandas as pd
import pytest

from lifelab.errors import ConfigError
from lifelab.platform.data import load_dataset
from lifelab.platform.streams import StreamConfig, build_stream
from lifelab.searches.launch import run_sweep
from lifelab.searches.spec import spec_from_dict
from lifelab.trainables.trainable import trial_seed

STREAM = {"kind": "split", "tasks": 2, "steps_per_task": 10,
          "scenario": {"grid": ["class", "task"]}}


def test_stream_keys_and_seeds_may_be_searched():
    spec = spec_from_dict({"learner": "finetune", "stream": STREAM,
                           "seed": {"grid": [3, 4]}})
    assert [s["scenario"] for s in spec.stream_variants()][:2] == ["class", "task"]
    assert spec.seeds() == [3, 4]
    assert trial_seed({"seed": 4, "lifelab_seed_searched": True}, "x_00003") == 4
    assert trial_seed({"seed": 4}, "x_00003") == 7


@pytest.mark.parametrize("stream, seed, message", [
    ({**STREAM, "tasks": {"grid": [2, 6]}}, 0, "exceeds the 10 classes|stream.tasks"),
    ({**STREAM, "scenario": {"grid": ["class", "sideways"]}}, 0, "scenario 'sideways'"),
    ({**STREAM, "scenario": {"uniform": [0, 1]}}, 0, "stream.scenario must be one of"),
    (STREAM, {"grid": [0, -1]}, "seed must be an integer"),
    ({**STREAM, "seed": {"grid": list(range(300))}}, 0, "more than 256 combinations"),
])
def test_a_bad_stream_search_is_refused(stream, seed, message):
    with pytest.raises(ConfigError, match=message):
        spec = spec_from_dict({"learner": "finetune", "stream": stream, "seed": seed})
        for variant in spec.stream_variants():           # what run_sweep checks at launch
            build_stream(StreamConfig.from_dict(variant), load_dataset("mnist5k"))


def test_optuna_cannot_take_a_stream_grid():
    with pytest.raises(ConfigError, match="optuna cannot take grid \\(stream.scenario\\)"):
        spec_from_dict({"learner": "finetune", "stream": STREAM,
                        "search": {"searcher": "optuna"}})


def test_a_sweep_runs_each_stream_and_seed_it_drew(ray_session, short_tmp):
    spec = spec_from_dict({"name": "streams", "learner": "finetune", "stream": STREAM,
                           "seed": {"grid": [5, 6]}, "config": {"hidden": [8]}})
    sweep_uri, results = run_sweep(spec, storage=short_tmp, progress_s=0)
    assert len(results) == 4 and not any(r.error for r in results)
    trials = pd.read_parquet(f"{sweep_uri}/results/trials")
    drawn = sorted((json.loads(c)["stream"]["scenario"], s)
                   for c, s in zip(trials.config_json, trials.seed, strict=True))
    assert drawn == [("class", 5), ("class", 6), ("task", 5), ("task", 6)]
    metrics = pd.read_parquet(f"{sweep_uri}/results/metrics")
    final = metrics[metrics.name == "acc_avg_cil"].groupby("trial_id").value.last()
    scenario = {t: json.loads(c)["stream"]["scenario"]
                for t, c in zip(trials.trial_id, trials.config_json, strict=True)}
    # each trial learned under the scenario it drew: a class-incremental finetune forgets the
    # first task's classes, a task-incremental one keeps them apart by head
    assert len(final) == 4 and set(scenario.values()) == {"class", "task"}
