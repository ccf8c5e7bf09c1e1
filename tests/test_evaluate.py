"""Selection re-run on fresh seeds: the tuning protocols, schedule replay in one trial, and
`lifelab evaluate` giving independent runs whose test metrics carry the ± of a report."""

import json
import os

import pandas as pd
import pytest
import torch
import yaml

from lifelab.cli import main
from lifelab.errors import ConfigError
from lifelab.platform.store import SPEC_FILE, ResultStore
from lifelab.searches.evaluate import evaluation_spec, selected_trial
from lifelab.searches.spec import spec_from_dict

STREAM = {"kind": "split", "tasks": 3, "scenario": "class", "steps_per_task": 20}


def test_first_tasks_tunes_on_a_shorter_stream_and_records_both():
    spec = spec_from_dict({"learner": "finetune", "stream": STREAM,
                           "protocol": {"kind": "first_tasks", "k": 2, "seed": 7}})
    assert spec.search_stream() == {**STREAM, "tasks": 2, "seed": 7}
    assert spec.stream == STREAM and spec.to_dict()["protocol"]["k"] == 2
    default = spec_from_dict({"learner": "finetune", "stream": STREAM})
    assert default.protocol == {"kind": "validation"} and default.search_stream() == STREAM


@pytest.mark.parametrize("protocol, message", [
    ({"kind": "first_tasks"}, "needs k"),
    ({"kind": "first_tasks", "k": 3}, "protocol.k must be below stream.tasks"),
    ({"kind": "holdout"}, "protocol.kind 'holdout' is unknown"),
    ({"kind": "validation", "k": 2}, "protocol.k is not a known key"),
])
def test_a_bad_protocol_is_one_line(protocol, message):
    with pytest.raises(ConfigError, match=message):
        spec_from_dict({"learner": "finetune", "stream": STREAM, "protocol": protocol})


def test_a_schedule_is_checked_by_the_learner():
    with pytest.raises(ConfigError, match="schedule.2.lr"):
        spec_from_dict({"learner": "finetune", "stream": STREAM,
                        "schedule": [[2, {"lr": -1.0}]]})
    with pytest.raises(ConfigError, match="changes the architecture"):
        spec_from_dict({"learner": "finetune", "stream": STREAM,
                        "schedule": [[2, {"hidden": [8]}]]})
    with pytest.raises(ConfigError, match="iterations increasing"):
        spec_from_dict({"learner": "finetune", "stream": STREAM,
                        "schedule": [[2, {"lr": 0.1}], [2, {"lr": 0.2}]]})


def test_the_selection_is_the_best_final_value_not_the_best_round():
    metrics = pd.DataFrame({"trial_id": ["a", "a", "b", "b"], "iteration": [1, 2, 1, 2],
                            "name": "val_acc_avg", "value": [0.99, 0.5, 0.7, 0.6]})
    assert selected_trial(metrics, "val_acc_avg", "max") == ("b", 0.6)
    assert selected_trial(metrics, "val_acc_avg", "min") == ("a", 0.5)


def _pbt_store(root) -> str:
    """A finished PBT search of two trials, as the recording callback writes it: b exploits a's
    checkpoint of iteration 2 and goes on under lr 0.0012; b ends best."""
    uri = str(root / "search")
    (root / "search").mkdir()
    spec = {"name": "search", "learner": "finetune", "stream": STREAM,
            "config": {"lr": {"loguniform": [1e-4, 1e-2]}, "hidden": [8]},
            "search": {"scheduler": "pbt", "samples": 2, "perturbation_interval": 2,
                       "mutations": {"lr": {"loguniform": [1e-4, 1e-2]}}},
            "stop": {"rounds": 6}}
    (root / "search" / SPEC_FILE).write_text(yaml.safe_dump(spec))
    store = ResultStore(uri)
    a = {"learner": "finetune", "lr": 0.001, "hidden": [8], "stream": STREAM, "seed": 0}
    b1 = {**a, "lr": 0.0012}
    store.append("trials", [
        {"sweep": "search", "trial_id": t, "learner": "finetune", "seed": i,
         "config_json": json.dumps(c), "status": "TERMINATED", "iterations": 6,
         "written_at": 1.0} for i, (t, c) in enumerate([("a", a), ("b", b1)])])
    store.append("metrics", [
        {"sweep": "search", "trial_id": t, "iteration": it, "time_s": 0.0,
         "name": "val_acc_avg", "value": v}
        for t, v in (("a", 0.5), ("b", 0.8)) for it in range(1, 7)])
    store.append("events", [{"sweep": "search", "trial_id": "b", "iteration": 2,
                             "kind": "exploit", "donor": "a", "old_config_json": json.dumps(a),
                             "new_config_json": json.dumps(b1), "time": 5.0}])
    return uri


def test_a_pbt_selection_becomes_the_schedule_of_its_ancestry(tmp_path):
    spec = evaluation_spec(_pbt_store(tmp_path), seeds=3)
    # b was selected; its final state is a's iterations 1-2 (lr 0.001), then its own under 0.0012
    assert spec["evaluates"]["trial"] == "b" and spec["evaluates"]["value"] == 0.8
    assert spec["config"] == {"lr": 0.001, "hidden": [8]}
    assert spec["schedule"] == [[3, {"lr": 0.0012}]]
    assert spec["search"]["samples"] == 3 and spec["search"]["scheduler"] == "fifo"
    assert spec["seed"] == 2 and spec["stop"] == {} and spec["stream"] == STREAM
    spec_from_dict(spec)                                       # a valid spec


def test_the_trainable_replays_a_schedule_and_resumes_inside_it(ray_session, tmp_path,
                                                                one_thread_after):
    from lifelab.trainables.trainable import LearnerTrainable

    config = {"learner": "finetune", "stream": STREAM, "hidden": [8], "lr": 1e-3,
              "steps_per_round": 5, "lifelab_schedule": [[3, {"lr": 0.05}]]}
    straight = LearnerTrainable(config=config)
    lrs = []
    for _ in range(6):
        straight.train()
        lrs.append(straight.learner.optimizer.param_groups[0]["lr"])
    assert lrs == [1e-3, 1e-3, 0.05, 0.05, 0.05, 0.05]
    interrupted = LearnerTrainable(config=config)
    for _ in range(4):
        interrupted.train()
    interrupted.save_checkpoint(str(tmp_path))
    resumed = LearnerTrainable(config=config)
    resumed.load_checkpoint(str(tmp_path))
    resumed._iteration = 4
    assert resumed.learner.optimizer.param_groups[0]["lr"] == 0.05
    for _ in range(2):
        resumed.train()
    for a, b in zip(straight.learner.model.parameters(), resumed.learner.model.parameters(),
                    strict=True):
        assert torch.equal(a, b)                              # bit for bit


def test_evaluate_runs_the_selection_on_independent_fresh_seeds(ray_session, short_tmp, capsys):
    search = {"name": "tune", "learner": "finetune", "stream": STREAM,
              "protocol": {"kind": "first_tasks", "k": 2},
              "config": {"lr": {"grid": [1e-3, 3e-3]}, "hidden": [8], "steps_per_round": 10},
              "search": {"samples": 1}}
    spec_file = f"{short_tmp}/tune.yaml"
    with open(spec_file, "w") as f:
        json.dump(search, f)
    assert main(["sweep", spec_file, "--storage", short_tmp, "--progress", "0"]) == 0
    capsys.readouterr()
    assert main(["evaluate", f"{short_tmp}/tune", "--seeds", "3", "--progress", "0"]) == 0
    printed = capsys.readouterr().out
    # the search saw the tuning stream: 2 tasks
    acc = pd.read_parquet(f"{short_tmp}/tune/results/accuracy")
    assert acc.eval_task.max() == 1 and set(acc.split) == {"test", "val"}
    trials = pd.read_parquet(f"{short_tmp}/tune-eval/results/trials")
    assert len(trials) == 3 and set(trials.status) == {"TERMINATED"}
    assert len(set(trials.seed)) == 3 and min(trials.seed) >= 2      # fresh: not 0 or 1
    configs = [json.loads(c) for c in trials.config_json]
    assert {c["stream"]["tasks"] for c in configs} == {3}            # the evaluation stream
    assert len({c["lr"] for c in configs}) == 1                       # the one selected
    assert not os.path.exists(f"{short_tmp}/tune-eval/results/events")   # no exploits
    eval_acc = pd.read_parquet(f"{short_tmp}/tune-eval/results/accuracy")
    assert eval_acc.eval_task.max() == 2
    line = next(x for x in printed.splitlines() if x.strip().startswith("acc_avg:"))
    assert "mean ± SEM over 3 seeds" in line
