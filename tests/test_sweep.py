"""A real PBT sweep on the embedded Ray: every result lands in Parquet, populations evolve."""

import contextlib
import io
import json

import pandas as pd
import pytest

from lifelab.analysis.report import text_report
from lifelab.analysis.status import status_text, sweep_status
from lifelab.searches.launch import run_sweep
from lifelab.searches.spec import spec_from_dict

ROUNDS = 4
SPEC = {
    "name": "tiny-pbt",
    "learner": {"grid": ["finetune", "joint"]},
    "stream": {"tasks": 2, "steps_per_task": 20},
    "config": {"lr": {"loguniform": [1e-4, 1e-2]}, "hidden": [32], "steps_per_round": 10},
    "search": {"scheduler": "pbt", "metric": "val_acc_avg", "mode": "max", "samples": 2,
               "perturbation_interval": 1, "quantile_fraction": 0.5,
               "mutations": {"lr": {"loguniform": [1e-4, 1e-2]}}},
    "stop": {"rounds": ROUNDS},
}


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    """(sweep_uri, results, what the driver printed: the progress tables)."""
    storage = tmp_path_factory.mktemp("storage")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        sweep_uri, results = run_sweep(spec_from_dict(SPEC), storage=str(storage),
                                       progress_s=1e-3)
    return sweep_uri, results, printed.getvalue()


def test_every_trial_completes_and_is_recorded(sweep):
    sweep_uri, results, _ = sweep
    assert len(results) == 4 and not any(r.error for r in results)
    trials = pd.read_parquet(f"{sweep_uri}/results/trials")
    assert len(trials) == 4 and set(trials.status) == {"TERMINATED"}
    assert sorted(trials.learner) == ["finetune", "finetune", "joint", "joint"]
    assert (trials.iterations == ROUNDS).all()
    assert trials.torch_version.str.len().gt(0).all() and trials.ray_version.eq("2.60.0").all()
    assert trials.seed.nunique() == 4            # each trial its own reproducible seed
    assert all(json.loads(c)["stream"]["tasks"] == 2 for c in trials.config_json)


def test_metrics_hold_one_row_per_trial_iteration_and_metric(sweep):
    sweep_uri, *_ = sweep
    metrics = pd.read_parquet(f"{sweep_uri}/results/metrics")
    assert not metrics.duplicated(["trial_id", "iteration", "name"]).any()
    acc = metrics[metrics.name == "acc_avg"]
    assert len(acc) == 4 * ROUNDS
    assert sorted(acc.groupby("trial_id").iteration.apply(list).iloc[0]) == [1, 2, 3, 4]
    assert {"acc_avg", "train_loss", "tasks_seen", "round_s", "bwt"} <= set(metrics.name)
    assert not set(metrics.name) & {"training_iteration", "time_total_s", "pid", "timestamp"}


def test_accuracy_rows_are_the_matrix_rows_of_finished_tasks(sweep):
    sweep_uri, *_ = sweep
    acc = pd.read_parquet(f"{sweep_uri}/results/accuracy")
    assert set(acc.trained_task) == {0, 1} and set(acc.split) == {"test", "val"}
    assert (acc.eval_task <= acc.trained_task).all()
    assert acc.accuracy.between(0, 1).all()
    # task 1 finishes at round 4 in every trial: a full row of 2 entries each, per split
    last = acc[acc.trained_task == 1]
    assert len(last) == 4 * 2 * 2 and set(last.iteration) == {ROUNDS}


def test_pbt_exploits_only_within_each_learners_population(sweep):
    sweep_uri, *_ = sweep
    events = pd.read_parquet(f"{sweep_uri}/results/events")
    trials = pd.read_parquet(f"{sweep_uri}/results/trials").set_index("trial_id")
    assert len(events) > 0 and set(events.kind) == {"exploit"}
    for event in events.itertuples():
        assert trials.learner[event.donor] == trials.learner[event.trial_id]
        old, new = json.loads(event.old_config_json), json.loads(event.new_config_json)
        assert old["learner"] == new["learner"]


def test_report_ranks_trials_by_the_sweep_metric(sweep):
    sweep_uri, *_ = sweep
    report = text_report(sweep_uri)
    assert "Best trial per learner" in report and "finetune" in report and "joint" in report
    assert report.splitlines()[1].startswith("Selected on: val_acc_avg")
    metrics = pd.read_parquet(f"{sweep_uri}/results/metrics")
    final = metrics[(metrics.name == "val_acc_avg") & (metrics.iteration == ROUNDS)]
    ranked = report.split("All trials, best first:")[1].splitlines()
    top = ranked[2].split()[0]                   # header, then the best trial
    assert final.set_index("trial_id").value[top] == final.value.max()


def test_asha_with_optuna_tpe_runs_and_records(ray_session, short_tmp):
    spec = spec_from_dict({
        "name": "asha-tpe", "learner": {"choice": ["finetune", "joint"]},
        "stream": {"tasks": 2, "steps_per_task": 10},
        "config": {"lr": {"loguniform": [1e-4, 1e-2]}, "hidden": [16], "steps_per_round": 5},
        "search": {"scheduler": "asha", "searcher": "optuna", "samples": 3, "grace_period": 1},
        "stop": {"rounds": 4},
    })
    sweep_uri, results = run_sweep(spec, storage=short_tmp)
    assert len(results) == 3 and not any(r.error for r in results)
    trials = pd.read_parquet(f"{sweep_uri}/results/trials")
    assert len(trials) == 3 and set(trials.status) == {"TERMINATED"}
    lrs = [json.loads(c)["lr"] for c in trials.config_json]
    assert len(set(lrs)) == 3 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    metrics = pd.read_parquet(f"{sweep_uri}/results/metrics")
    assert not metrics.duplicated(["trial_id", "iteration", "name"]).any()


def test_a_diverging_trial_stops_with_its_reason_and_the_others_finish(ray_session, short_tmp):
    spec = spec_from_dict({
        "name": "diverge", "learner": "finetune",
        "stream": {"tasks": 1, "steps_per_task": 40},
        "config": {"lr": {"grid": [1e-3, 1e10]}, "optimizer": "sgd", "hidden": [16],
                   "steps_per_round": 10},
        "search": {"scheduler": "fifo"},
    })
    sweep_uri, results = run_sweep(spec, storage=short_tmp)
    trials = pd.read_parquet(f"{sweep_uri}/results/trials")
    trials["lr"] = [json.loads(c)["lr"] for c in trials.config_json]
    by_lr = trials.set_index("lr")
    assert by_lr.status[1e-3] == "TERMINATED" and by_lr.iterations[1e-3] == 4
    assert by_lr.status[1e10] == "DIVERGED" and by_lr.iterations[1e10] == 1
    error = by_lr.error[1e10]
    assert "train_loss became" in error and "lower the learning rate" in error


def last_values(sweep_uri, name) -> pd.Series:
    metrics = pd.read_parquet(f"{sweep_uri}/results/metrics")
    return metrics[metrics.name == name].sort_values("iteration").groupby("trial_id").value.last()


def test_status_shows_each_trial_at_the_end_of_its_stream(sweep):
    sweep_uri, *_ = sweep
    table = sweep_status(sweep_uri)
    assert len(table) == 4 and set(table.status) == {"TERMINATED"}
    assert (table.iteration == ROUNDS).all()
    # the selection metric at the end of the stream (not its best round), the test twin beside
    assert list(table.columns[3:6]) == ["iteration", "val_acc_avg", "acc_avg"]
    assert not [c for c in table if c.startswith("best")]
    by_trial = table.set_index("trial_id")
    assert by_trial.val_acc_avg.to_dict() == last_values(sweep_uri, "val_acc_avg").to_dict()
    assert by_trial.acc_avg.to_dict() == last_values(sweep_uri, "acc_avg").to_dict()
    assert table.val_acc_avg.is_monotonic_decreasing
    text = status_text(sweep_uri)
    assert "4 trials (4 terminated); ranked by val_acc_avg (max), acc_avg beside it" in text


def test_pb2_explores_within_its_bounds(ray_session, short_tmp):
    spec = spec_from_dict({
        "name": "pb2", "learner": "finetune", "stream": {"tasks": 2, "steps_per_task": 20},
        "config": {"lr": {"uniform": [1e-3, 5e-3]}, "hidden": [16], "steps_per_round": 5},
        "search": {"scheduler": "pb2", "samples": 2, "perturbation_interval": 2,
                   "quantile_fraction": 0.5, "mutations": {"lr": {"uniform": [1e-3, 5e-3]}}},
        "stop": {"rounds": 8},
    })
    sweep_uri, results = run_sweep(spec, storage=short_tmp)
    assert len(results) == 2 and not any(r.error for r in results)
    events = pd.read_parquet(f"{sweep_uri}/results/events")
    assert len(events) > 0
    for event in events.itertuples():
        assert 1e-3 <= json.loads(event.new_config_json)["lr"] <= 5e-3


def test_grid_searcher_runs_every_combination_once(ray_session, short_tmp):
    spec = spec_from_dict({
        "name": "grid", "learner": {"choice": ["finetune", "joint"]},
        "stream": {"tasks": 1, "steps_per_task": 10},
        "config": {"hidden": {"choice": [[8], [16]]}},
        "search": {"searcher": "grid"},
    })
    sweep_uri, results = run_sweep(spec, storage=short_tmp)
    trials = pd.read_parquet(f"{sweep_uri}/results/trials")
    combos = sorted((t.learner, tuple(json.loads(t.config_json)["hidden"]))
                    for t in trials.itertuples())
    assert combos == [("finetune", (8,)), ("finetune", (16,)), ("joint", (8,)), ("joint", (16,))]


def test_progress_tables_show_the_metric_and_the_mutated_parameters(sweep):
    sweep_uri, _, printed = sweep
    tables = [t for t in printed.split("\ntiny-pbt: ")[1:]]
    assert len(tables) >= 2, printed        # while it runs, and once at the end
    final = tables[-1].splitlines()
    assert final[0].startswith("4 trials (4 terminated), val_acc_avg (max), acc_avg beside it")
    header = final[1].split()
    assert header[:5] == ["trial", "status", "round", "val_acc_avg", "acc_avg"]
    assert header[-2:] == ["learner", "lr"]
    rows = [line.split() for line in final[2:6]]    # then the pace and footprint lines
    assert final[6].startswith("rounds ") and "checkpoints on storage" in final[7], printed
    # ranked by the selection metric at the end of the stream, not by its best round
    val, test = last_values(sweep_uri, "val_acc_avg"), last_values(sweep_uri, "acc_avg")
    trials = pd.read_parquet(f"{sweep_uri}/results/trials").set_index("trial_id")
    shown = [val[row[0]] for row in rows]
    assert sorted(row[0] for row in rows) == sorted(val.index)
    assert shown == sorted(shown, reverse=True)
    for trial_id, status, rounds, val_value, test_value, learner, lr in rows:
        config = json.loads(trials.config_json[trial_id])
        assert (status, int(rounds), learner) == ("TERMINATED", ROUNDS, config["learner"])
        assert float(val_value) == pytest.approx(val[trial_id], abs=1e-4)
        assert float(test_value) == pytest.approx(test[trial_id], abs=1e-4)
        assert float(lr) == pytest.approx(config["lr"], rel=1e-3)   # after PBT's mutations
