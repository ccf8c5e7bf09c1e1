"""The progress table and `lifelab status` rank by the spec's (validation) metric at the end of the
stream and show its test twin beside it; each trial shows only its own learner's keys; and in a
real PBT sweep over two learners no population mutates another learner's key."""

from __future__ import annotations

import contextlib
import io
import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
from test_analysis import trial_row, write_spec

from lifelab.analysis.status import status_text, sweep_status
from lifelab.platform.config import parse_spec
from lifelab.platform.store import ResultStore
from lifelab.searches.progress import SHOWN_TRIALS, ProgressCallback
from lifelab.trainables.registry import learner_class

# A continual learner's curves: its selection metric is highest after the first task and falls
# as the stream goes on; the best round says nothing, the end of the stream is what counts.
CURVES = {"a": [0.99, 0.60, 0.50], "b": [0.90, 0.80, 0.70], "c": [0.95, 0.75, 0.65]}


def write_curves(tmp_path, name="curves", metric="val_acc_avg", mode="max", curves=CURVES,
                 twin="acc_avg"):
    uri = write_spec(tmp_path / name, name, search={"scheduler": "fifo", "metric": metric,
                                                   "mode": mode})
    store = ResultStore(uri, run=1)
    store.append("trials", [trial_row(name, t, "finetune", i, {"lr": 0.1}, iterations=3)
                            for i, t in enumerate(curves)])
    rows = []
    for t, values in curves.items():
        for it, v in enumerate(values, start=1):
            rows.append({"sweep": name, "trial_id": t, "iteration": it, "time_s": 1.0,
                         "name": metric, "value": v})
            if twin:
                rows.append({"sweep": name, "trial_id": t, "iteration": it, "time_s": 1.0,
                             "name": twin, "value": v - 0.1})
    store.append("metrics", rows)
    return uri


def test_status_ranks_a_cl_metric_by_its_end_of_stream_value(tmp_path):
    table = sweep_status(write_curves(tmp_path))
    assert table.trial_id.tolist() == ["b", "c", "a"]          # by the last value, not the max
    assert table.val_acc_avg.tolist() == [0.70, 0.65, 0.50]
    assert table.acc_avg.tolist() == pytest.approx([0.60, 0.55, 0.40])   # the test twin
    assert not [c for c in table if c.startswith("best")]


def test_status_keeps_best_so_far_for_a_metric_without_twins(tmp_path):
    # e.g. a learned optimizer's loss ratio (mode min): each round a fresh evaluation of the
    # current state, each checkpointed, so its best round is a state the trial produced
    curves = {"x": [0.9, 0.5, 0.8], "y": [0.7, 0.6, 0.6]}
    uri = write_curves(tmp_path, "opt", metric="loss_ratio_adam", mode="min", curves=curves,
                       twin=None)
    table = sweep_status(uri)
    assert table.trial_id.tolist() == ["x", "y"]
    assert table.loss_ratio_adam.tolist() == [0.8, 0.6]         # last
    assert table.best_loss_ratio_adam.tolist() == [0.5, 0.6]    # best so far, the ranking
    assert "ranked by loss_ratio_adam (min)" in status_text(uri)


class FakeTrial(SimpleNamespace):
    pass


def two_learner_spec(metric="val_acc_avg", mode="max"):
    return parse_spec({"name": "two", "learner": {"grid": ["finetune", "l2"]},
                       "config": {"lr": {"loguniform": [1e-4, 1e-2]}},
                       "search": {"scheduler": "pbt", "metric": metric, "mode": mode,
                                  "mutations": {"lr": {"loguniform": [1e-4, 1e-2]},
                                                "l2_lambda": [0.1, 1.0, 10.0]}},
                       "stop": {"rounds": 3}}, "two")


def play(callback, trials, curves, twin_offset=-0.1):
    for it in range(3):
        for t in trials:
            value = curves[t.trial_id][it]
            result = {callback.metric: value, "training_iteration": it + 1}
            if twin_offset is not None:
                result["acc_avg"] = value + twin_offset
            t.last_result = result
            callback.on_trial_result(it, trials, t, result)


def test_progress_table_ranks_by_the_end_of_stream_value_with_the_test_twin_beside():
    callback = ProgressCallback(two_learner_spec())
    trials = [FakeTrial(trial_id=t, status="RUNNING", last_result=None,
                        config={"learner": "finetune" if t != "c" else "l2", "lr": 0.001,
                                "l2_lambda": 10.0, "seed": 0}) for t in CURVES]
    play(callback, trials, CURVES)
    lines = callback.table(trials).strip().splitlines()
    assert lines[0].startswith("two: 3 trials (3 running), val_acc_avg (max), acc_avg beside it")
    assert lines[1].split() == ["trial", "status", "round", "val_acc_avg", "acc_avg", "learner",
                                "lr", "l2_lambda"]
    rows = [line.split() for line in lines[2:-2]]        # below: the pace, the footprint
    assert [r[0] for r in rows] == ["b", "c", "a"]
    assert [r[3:5] for r in rows] == [["0.7000", "0.6000"], ["0.6500", "0.5500"],
                                      ["0.5000", "0.4000"]]
    # l2_lambda is the l2 trial's own key; a finetune trial carries it unused: "-"
    assert {r[0]: r[7] for r in rows} == {"a": "-", "b": "-", "c": "10"}


def test_progress_table_keeps_best_so_far_for_a_metric_without_twins():
    spec = parse_spec({"name": "opt", "learner": "finetune",
                       "search": {"metric": "loss_ratio_adam", "mode": "min"}}, "opt")
    callback = ProgressCallback(spec)
    curves = {"x": [0.9, 0.5, 0.8], "y": [0.7, 0.6, 0.6]}
    trials = [FakeTrial(trial_id=t, status="RUNNING", last_result=None, config={})
              for t in curves]
    play(callback, trials, curves, twin_offset=None)
    lines = callback.table(trials).strip().splitlines()
    assert lines[1].split()[3:] == ["loss_ratio_adam", "best", "loss_ratio_adam"]
    assert [line.split()[:5] for line in lines[2:-2]] == [
        ["x", "RUNNING", "3", "0.8000", "0.5000"], ["y", "RUNNING", "3", "0.6000", "0.6000"]]
    assert lines[-2] == "rounds 6 done"                    # no stop.rounds: no total to show


def test_a_trial_stopped_for_divergence_shows_diverged_not_terminated():
    spec = parse_spec({"name": "div", "learner": "finetune", "search": {"scheduler": "fifo"}},
                      "div")
    callback = ProgressCallback(spec)
    curves = {"ok": [0.5, 0.6, 0.7], "nan": [0.3, 0.2, 0.1], "run": [0.4, 0.4, 0.4]}
    trials = [FakeTrial(trial_id=t, status="RUNNING", last_result=None, config={})
              for t in curves]
    play(callback, trials, curves)
    callback.on_trial_result(3, trials, trials[2], {callback.metric: -math.inf})   # awaits rescue
    trials[0].status = trials[1].status = "TERMINATED"
    trials[1].last_result = {**trials[1].last_result, "lifelab_stop": "train_loss became nan"}
    lines = callback.table(trials).strip().splitlines()
    counts = lines[0].split(" trials (")[1].split(")")[0]
    assert sorted(counts.split(", ")) == ["1 diverged", "1 running", "1 terminated"]
    assert {line.split()[0]: line.split()[1:4] for line in lines[2:]
            if line.split()[0] in curves} == {
        "ok": ["TERMINATED", "3", "0.7000"], "nan": ["DIVERGED", "3", "0.1000"],
        "run": ["RUNNING", "3", "-"]}


def test_each_learners_population_mutates_only_its_own_keys(ray_session, short_tmp):
    from lifelab.analysis import load
    from lifelab.searches.launch import run_sweep
    from lifelab.searches.spec import spec_from_dict

    spec = spec_from_dict({
        "name": "two-pbt", "learner": {"grid": ["finetune", "l2"]},
        "stream": {"tasks": 2, "steps_per_task": 10},
        "config": {"lr": {"loguniform": [1e-3, 1e-2]}, "hidden": [16], "steps_per_round": 5},
        "search": {"scheduler": "pbt", "samples": 2, "perturbation_interval": 1,
                   "quantile_fraction": 0.5, "resample_probability": 0.0,
                   "mutations": {"lr": {"loguniform": [1e-3, 1e-2]},
                                 "l2_lambda": [0.1, 1.0, 10.0]}},
        "stop": {"rounds": 4},
    })
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        sweep_uri, results = run_sweep(spec, storage=short_tmp, progress_s=1e-3)
    assert len(results) == 4 and not any(r.error for r in results)
    own = {name: set(learner_class(name).params) for name in ("finetune", "l2")}
    trials = pd.read_parquet(f"{sweep_uri}/results/trials").set_index("trial_id")
    for trial_id, t in trials.iterrows():
        config = json.loads(t.config_json)
        # PBT fills in each mutated key a trial lacks: only its own learner's
        assert ("l2_lambda" in config) == (t.learner == "l2"), trial_id
    events = pd.read_parquet(f"{sweep_uri}/results/events")
    assert len(events) > 0
    for e in events.itertuples():
        old, new = json.loads(e.old_config_json), json.loads(e.new_config_json)
        changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
        learner = trials.learner[e.trial_id]
        assert changed and changed <= own[learner], (learner, changed)
    t = load(sweep_uri)
    for e in t.family_tree().itertuples():
        if trials.learner[e.trial_id] == "finetune":
            assert "l2_lambda" not in e.changes
    sched = t.schedules()
    finetune = trials.index[trials.learner == "finetune"]
    assert set(sched.key[sched.trial_id.isin(finetune)]) == {"lr"}
    final = printed.getvalue().split("\ntwo-pbt: ")[-1].splitlines()
    head = final[1].split()
    assert head[3:5] == ["val_acc_avg", "acc_avg"] and head[-3:] == ["learner", "lr",
                                                                      "l2_lambda"]
    for row in (line.split() for line in final[2:6]):
        assert (row[-1] == "-") == (row[-3] == "finetune"), row


def test_a_big_population_shows_its_best_and_what_the_sweep_keeps():
    class Kept:
        def summary(self):
            return "4 checkpoints on storage (1.5 MB)"
    callback = ProgressCallback(two_learner_spec(), storage=Kept())
    n = SHOWN_TRIALS + 5
    trials = [FakeTrial(trial_id=f"t{i:02d}", status="RUNNING", last_result=None,
                        config={"learner": "finetune", "lr": 0.001, "seed": 0})
              for i in range(n)]
    play(callback, trials, {t.trial_id: [i / 100] * 3 for i, t in enumerate(trials)})
    lines = callback.table(trials).strip().splitlines()
    assert [line.split()[0] for line in lines[2:2 + SHOWN_TRIALS]] == [
        f"t{i:02d}" for i in range(n - 1, 4, -1)]                  # the best first
    assert lines[-3] == "... and 5 more trials (lifelab status SWEEP_DIR lists them all)"
    assert lines[-2] == f"rounds {3 * n}/{3 * n} (100%)"
    assert lines[-1].startswith("4 checkpoints on storage (1.5 MB); driver memory peak ")


def test_the_pace_line_counts_rounds_and_estimates_the_time_left(monkeypatch):
    callback = ProgressCallback(two_learner_spec())          # 4 samples x 3 rounds
    clock = iter([100.0, 130.0])
    monkeypatch.setattr("lifelab.searches.progress.time.monotonic", lambda: next(clock))
    assert callback.pace(2, 4) == "rounds 2/12 (17%)"
    assert callback.pace(5, 4) == "rounds 5/12 (42%), about 70 s left"   # 3 rounds in 30 s
