"""Selection on validation, reporting on test, and ± only over independent runs, on stores built
directly with ResultStore (no Ray): the test and validation matrices rebuilt through PBT lineage,
stores from before validation splits, each trial's own learner's keys, and a PBT population
counted as one run (its selected member)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_analysis import simulate, trial_row, write_spec

from lifelab import analysis
from lifelab.platform import metrics as clm
from lifelab.platform.store import SCHEMAS, ResultStore


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("pbt") / "syn")


def test_validation_matrix_rebuilds_on_its_own_and_reproduces_the_val_metrics(sim):
    t = analysis.load(sim.uri)
    assert set(t.accuracy.split) == {"test", "val"}
    last = t.wide[t.wide.iteration == 6].set_index("trial_id")
    val = analysis.matrices(t, split="val")
    for trial, state in sim.state.items():
        V = t.matrix(trial, split="val").to_numpy()
        np.testing.assert_array_equal(V[-1], state["val_rows"][-1])
        np.testing.assert_array_equal(val[("syn", trial)], V)
        assert np.nanmean(V[-1]) == pytest.approx(last.val_acc_avg[trial])
        assert clm.backward_transfer(V) == pytest.approx(last.val_bwt[trial])
        # the reported summaries come from the test matrix only
        assert t.summary().set_index("trial_id").final_acc[trial] == pytest.approx(
            np.mean(state["rows"][-1]))


def test_a_store_from_before_validation_splits_reads_as_test(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri = write_spec(tmp_path / "old", "old", search={"scheduler": "fifo", "metric": "acc_avg"})
    old_schema = pa.schema([f for f in SCHEMAS["accuracy"] if f.name != "split"])
    rows = [{"sweep": "old", "trial_id": "t0", "iteration": i + 1, "trained_task": i,
             "eval_task": j, "accuracy": a, "run": 1}
            for i, row in enumerate([[0.9], [0.6, 0.8]]) for j, a in enumerate(row)]
    folder = tmp_path / "old" / "results" / "accuracy"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), folder / "part-1-old.parquet")
    ResultStore(uri, run=1).append("trials", [trial_row("old", "t0", "finetune", 0, {})])
    t = analysis.load(uri)
    assert t.accuracy.split.tolist() == ["test"] * 3
    assert t.matrix("t0").to_numpy()[1].tolist() == [0.6, 0.8]
    assert t.matrix("t0", split="val").empty
    assert t.summary().final_acc.tolist() == [pytest.approx(0.7)]


def two_learner_sweep(tmp_path):
    """A PBT sweep over finetune and l2, recorded the way it was before each learner's population
    mutated only its own keys: every trial carries l2_lambda, and f1's exploit mutated it."""
    uri = write_spec(tmp_path / "two", "two", learner={"grid": ["finetune", "l2"]},
                     search={"scheduler": "pbt", "metric": "val_acc_avg",
                             "mutations": {"lr": [0.01, 0.1], "l2_lambda": [1.0, 10.0]}})
    store = ResultStore(uri, run=1)
    configs = {"f0": {"learner": "finetune", "lr": 0.1, "l2_lambda": 1.0},
               "f1": {"learner": "finetune", "lr": 0.01, "l2_lambda": 10.0},
               "l0": {"learner": "l2", "lr": 0.1, "l2_lambda": 1.0},
               "l1": {"learner": "l2", "lr": 0.1, "l2_lambda": 10.0}}
    store.append("trials", [trial_row("two", t, c["learner"], i, c, iterations=2)
                            for i, (t, c) in enumerate(configs.items())])
    store.append("metrics", [{"sweep": "two", "trial_id": t, "iteration": it, "time_s": 1.0,
                              "name": "val_acc_avg", "value": 0.5 + 0.1 * i}
                             for i, t in enumerate(configs) for it in (1, 2)])
    old_f1 = {"learner": "finetune", "lr": 0.1, "l2_lambda": 1.0}
    old_l1 = {"learner": "l2", "lr": 0.1, "l2_lambda": 1.0}
    store.append("events", [
        {"sweep": "two", "trial_id": "f1", "iteration": 1, "kind": "exploit", "donor": "f0",
         "old_config_json": json.dumps(old_f1), "new_config_json": json.dumps(configs["f1"]),
         "time": 1.0},
        {"sweep": "two", "trial_id": "l1", "iteration": 1, "kind": "exploit", "donor": "l0",
         "old_config_json": json.dumps(old_l1), "new_config_json": json.dumps(configs["l1"]),
         "time": 2.0}])
    return uri


def test_each_trial_shows_only_its_own_learners_keys(tmp_path):
    t = analysis.load(two_learner_sweep(tmp_path))
    lam = t.trials.set_index("trial_id")["config.l2_lambda"]
    assert lam.isna().tolist() == [True, True, False, False]      # finetune has no l2_lambda
    board = t.leaderboard().set_index("trial_id")
    assert board["config.l2_lambda"].isna().to_dict() == {"l1": False, "l0": False,
                                                          "f1": True, "f0": True}
    tree = t.family_tree().set_index("trial_id").changes
    assert tree["f1"] == "lr: 0.1 -> 0.01"                        # not l2_lambda
    assert tree["l1"] == "l2_lambda: 1 -> 10"
    sched = t.schedules()
    assert set(sched.key[sched.trial_id.isin(["f0", "f1"])]) == {"lr"}
    assert set(sched.key[sched.trial_id.isin(["l0", "l1"])]) == {"l2_lambda", "lr"}
    assert "config.l2_lambda" not in t.ancestry("f1")
    # finetune's trials form one group whatever l2_lambda they carried
    assert sorted(t.groups().group) == ["finetune", "l2"]


def test_a_pbt_population_is_one_run_its_selected_member_without_sem(sim):
    t = analysis.load(sim.uri)
    groups = t.groups().set_index("group")
    assert sorted(groups.index) == ["finetune", "joint"]
    assert set(groups.n) == {1} and set(groups.trials) == {2}
    assert groups.filter(like="_sem").isna().all().all()       # no ± over members
    summary = t.summary().set_index("trial_id")
    assert summary.population.to_dict() == {"A": "syn/learner=finetune",
                                            "B": "syn/learner=finetune",
                                            "C": "syn/learner=joint", "D": "syn/learner=joint"}
    for group, members in (("finetune", "AB"), ("joint", "CD")):
        best = max(members, key=lambda m: summary.score[m])       # by validation
        assert summary.selected[best] and summary.selected.sum() == 2
        assert groups.final_acc_mean[group] == summary.final_acc[best]
        assert groups.score_mean[group] == summary.score[best]


def test_independent_pbt_sweeps_of_one_spec_give_sem_over_their_populations(tmp_path):
    a, b = simulate(tmp_path / "a", seed=1), simulate(tmp_path / "b", name="syn-s2", seed=2)
    t = analysis.load([a.uri, b.uri])
    groups = t.groups().set_index("group")
    assert set(groups.n) == {2} and set(groups.trials) == {4}
    summary = t.summary()
    for group in ("finetune", "joint"):
        picked = summary[(summary.group == group) & summary.selected]
        assert sorted(picked.sweep) == ["syn", "syn-s2"]
        mean, sem = analysis.mean_sem(picked.final_acc)
        assert groups.final_acc_mean[group] == pytest.approx(mean)
        assert groups.final_acc_sem[group] == pytest.approx(sem) and sem > 0


def test_final_accuracy_plot_draws_each_population_once(sim):
    from lifelab.analysis import plots

    fig = plots.plot_final_accuracy(analysis.load(sim.uri))
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert sorted(labels) == ["finetune (n=1)", "joint (n=1)"]
