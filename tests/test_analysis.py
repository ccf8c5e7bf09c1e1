"""lifelab.analysis on stores built directly with ResultStore (no Ray): typed tables, several
sweeps, CL summaries, a simulated PBT lineage checked against its ground truth, schedules, plots,
selection on validation with test numbers beside it, and ± only over independent runs.

`PBTSim` plays a population the way the trainable and the recording callback write it: each
round appends the trial's metrics (test and `val_` twins) and the test and validation matrix rows
it finished; an exploit copies the donor's state (both matrices, iteration) and records an event
(donor checkpoint iteration, donor config, new config); the accuracy table only ever gets rows a
trial computed itself.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from lifelab import analysis
from lifelab.analysis import plots
from lifelab.errors import LifelabError, StorageError
from lifelab.platform import metrics as clm
from lifelab.platform.store import ResultStore


def write_spec(sweep_dir, name, **overrides) -> str:
    spec = {"name": name, "learner": {"grid": ["finetune", "joint"]},
            "stream": {"dataset": "mnist5k", "kind": "permuted", "tasks": 6},
            "config": {"lr": {"loguniform": [1e-4, 1e-2]}},
            "search": {"scheduler": "pbt", "metric": "val_acc_avg", "mode": "max",
                       "mutations": {"lr": {"loguniform": [1e-4, 1e-2]}}},
            "stop": {"rounds": 6}, "seed": 0, **overrides}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "spec.yaml").write_text(yaml.safe_dump(spec))
    return str(sweep_dir)


def trial_row(sweep, trial_id, learner, seed, config, status="TERMINATED", iterations=6,
              error="", written_at=1.0):
    return {"sweep": sweep, "trial_id": trial_id, "learner": learner, "seed": seed,
            "config_json": json.dumps(config, sort_keys=True), "status": status,
            "error": error, "iterations": iterations, "node": "n", "ray_version": "2.60.0",
            "torch_version": "t", "written_at": written_at}


class PBTSim:
    """A deterministic PBT population writing the store like the recording callback."""

    def __init__(self, sweep_dir, name="syn", learners=None, seed=0):
        learners = learners or {"A": "finetune", "B": "finetune", "C": "joint", "D": "joint"}
        self.uri = write_spec(sweep_dir, name)
        self.name = name
        self.store = ResultStore(self.uri, run=1)
        self.rng = np.random.default_rng(seed)
        self.clock = 1000.0
        self.learner = learners
        self.state = {t: {"it": 0, "rows": [], "val_rows": [], "history": {},
                          "config": {"learner": lr, "lr": 0.001 * (i + 1), "hidden": [8],
                                     "seed": 0, "stream": {"tasks": 6, "seed": 0}}}
                      for i, (t, lr) in enumerate(learners.items())}
        self.initial = {t: copy.deepcopy(s["config"]) for t, s in self.state.items()}
        self.live_config = {t: {} for t in learners}     # config in force at each live iteration

    def step(self, trial, n=1):
        for _ in range(n):
            s = self.state[trial]
            s["it"] += 1
            row = [float(x) for x in np.round(self.rng.uniform(0.2, 1.0, len(s["rows"]) + 1),
                                              3)]
            val_row = [float(x) for x in np.round(self.rng.uniform(0.2, 1.0, len(row)), 3)]
            s["rows"].append(row)
            s["val_rows"].append(val_row)
            s["history"][s["it"]] = (trial, s["config"]["lr"])
            self.live_config[trial][s["it"]] = s["config"]["lr"]
            summary = clm.summarize(s["rows"])
            summary.update({f"val_{k}": v for k, v in clm.summarize(s["val_rows"]).items()
                            if k != "tasks_seen"})
            summary["train_loss"] = 1.0 / s["it"]
            self.store.append("metrics", [
                {"sweep": self.name, "trial_id": trial, "iteration": s["it"],
                 "time_s": float(s["it"]), "name": k, "value": float(v)}
                for k, v in summary.items()])
            self.store.append("accuracy", [
                {"sweep": self.name, "trial_id": trial, "iteration": s["it"],
                 "trained_task": len(s["rows"]) - 1, "eval_task": j, "accuracy": a,
                 "split": split}
                for split, r in (("test", row), ("val", val_row)) for j, a in enumerate(r)])

    def exploit(self, child, donor, lr):
        c, d = self.state[child], self.state[donor]
        new = {**copy.deepcopy(d["config"]), "lr": lr}
        self.clock += 1.0
        self.store.append("events", [{
            "sweep": self.name, "trial_id": child, "iteration": d["it"], "kind": "exploit",
            "donor": donor, "old_config_json": json.dumps(d["config"], sort_keys=True),
            "new_config_json": json.dumps(new, sort_keys=True), "time": self.clock}])
        c["rows"], c["it"] = copy.deepcopy(d["rows"]), d["it"]
        c["val_rows"] = copy.deepcopy(d["val_rows"])
        c["history"] = {i: h for i, h in d["history"].items() if i <= d["it"]}
        c["config"] = new

    def finish(self, compact=True):
        self.store.append("trials", [
            trial_row(self.name, t, self.learner[t], i, s["config"], iterations=s["it"])
            for i, (t, s) in enumerate(self.state.items())])
        if compact:
            self.store.compact_all()
        return self.uri


def simulate(sweep_dir, compact=True, name="syn", seed=0) -> PBTSim:
    """A, B finetune; C, D joint; six rounds (one task each), exploits at rounds 2 and 4 with a
    cycle (B copies A, later A copies B) and a trial sent back in time (C at round 5 copies D's
    round-4 checkpoint and repeats round 5)."""
    sim = PBTSim(sweep_dir, name=name, seed=seed)
    for t in "ABCD":
        sim.step(t, 2)
    sim.exploit("B", "A", lr=0.0042)
    sim.exploit("D", "C", lr=0.0055)
    for t in "ABCD":
        sim.step(t, 2)
    sim.exploit("A", "B", lr=0.0077)
    sim.step("C")
    sim.exploit("C", "D", lr=0.0066)
    for t in "ABCD":
        sim.step(t, 6 - sim.state[t]["it"])
    sim.finish(compact=compact)
    return sim


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("pbt") / "syn")


# -- tables -----------------------------------------------------------------------------------

def test_load_gives_typed_tables_with_flat_config(sim):
    t = analysis.load(sim.uri)
    assert list(t.trials.trial_id) == ["A", "B", "C", "D"]
    assert t.trials["config.lr"].dtype == np.float64
    assert t.trials["config.stream.tasks"].tolist() == [6] * 4
    assert t.trials["config.hidden"].tolist() == [(8,)] * 4          # lists -> tuples
    assert str(t.trials.seed.dtype) == "Int64" and "config.learner" not in t.trials
    assert isinstance(t.metrics.name.dtype, pd.CategoricalDtype)
    assert isinstance(t.metrics.trial_id.dtype, pd.CategoricalDtype)
    assert t.metrics.iteration.dtype == np.int64 and t.metrics.value.dtype == np.float64
    assert set(t.metrics.sweep) == {"syn"}
    # one live row per key, the same rows as the store's own reader
    raw = ResultStore(sim.uri).read("metrics")
    assert len(t.metrics) == len(raw) == 4 * 6 * 8      # 5 metrics and 3 val_ twins
    assert not t.metrics.duplicated(["trial_id", "iteration", "name"]).any()


def test_wide_metrics_pivot_one_row_per_trial_iteration(sim):
    t = analysis.load(sim.uri)
    wide = t.wide
    assert len(wide) == 4 * 6
    assert {"acc_avg", "bwt", "forgetting", "tasks_seen", "train_loss", "time_s"} <= set(wide)
    long = t.metrics.set_index(["trial_id", "iteration", "name"]).value
    for row in wide.sample(5, random_state=0).itertuples():
        assert row.acc_avg == long[(row.trial_id, row.iteration, "acc_avg")]
        assert row.train_loss == long[(row.trial_id, row.iteration, "train_loss")]


def test_metric_names_filter_reads_only_those(sim):
    t = analysis.load(sim.uri, metric_names=["acc_avg"])
    assert set(t.metrics.name) == {"acc_avg"} and len(t.metrics) == 24
    assert list(t.wide.columns) == ["sweep", "trial_id", "iteration", "acc_avg", "time_s"]


def test_uncompacted_store_with_a_resumed_run_loads_its_live_rows(tmp_path):
    uri = write_spec(tmp_path / "res", "res")
    first = ResultStore(uri, run=1)
    rows = [{"sweep": "res", "trial_id": "a", "iteration": i, "time_s": float(i),
             "name": "acc_avg", "value": 0.1} for i in (1, 2, 3, 4)]
    first.append("metrics", rows)
    ResultStore(uri, run=2).append("metrics", [{**r, "value": 0.9} for r in rows[2:3]])
    t = analysis.load(uri)
    assert t.metrics.set_index("iteration").value.to_dict() == {1: 0.1, 2: 0.1, 3: 0.9}
    assert t.trials.empty and t.wide.acc_avg.tolist() == [0.1, 0.1, 0.9]


def test_several_sweeps_load_together_with_unique_labels(tmp_path):
    a = simulate(tmp_path / "a").uri
    b = simulate(tmp_path / "b").uri             # same spec name "syn" in another storage
    t = analysis.load([a, b])
    assert t.sweeps == ["syn", "syn#2"] and t.uris == {"syn": a, "syn#2": b}
    assert len(t.trials) == 8 and set(t.metrics.sweep) == {"syn", "syn#2"}
    assert set(t.wide.sweep) == {"syn", "syn#2"} and len(t.wide) == 48
    with pytest.raises(LifelabError, match="several sweeps"):
        t.matrix("A")
    assert t.matrix("A", sweep="syn#2").shape == (6, 6)
    named = analysis.load([a, b], labels=["left", "right"])
    assert named.sweeps == ["left", "right"]


def test_missing_or_non_sweep_dirs_are_one_line_storage_errors(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        analysis.load(str(tmp_path / "nope"))
    with pytest.raises(StorageError, match="not a lifelab sweep"):
        analysis.load(str(tmp_path))


def test_empty_sweep_loads_empty_typed_tables(tmp_path):
    t = analysis.load(write_spec(tmp_path / "empty", "empty"))
    assert t.metrics.empty and t.accuracy.empty and t.events.empty and t.trials.empty
    assert t.summary().empty and t.groups().empty and t.leaderboard().empty
    assert t.schedules().empty and t.family_tree().empty


# -- lineage ----------------------------------------------------------------------------------

def test_lineage_rebuilds_each_trials_full_matrix_exactly(sim):
    t = analysis.load(sim.uri)
    for trial, state in sim.state.items():
        R = t.matrix(trial).to_numpy()
        truth = np.full((6, 6), np.nan)
        for i, row in enumerate(state["rows"]):
            truth[i, :len(row)] = row
        np.testing.assert_array_equal(R, truth, err_msg=trial)
    # A's own rows alone are not its matrix: rows 2 and 3 came from B after the exploit
    own = t.matrix("A", lineage=False).to_numpy()
    assert not np.array_equal(own[2, :3], np.asarray(sim.state["A"]["rows"][2]))


def test_lineage_matrix_reproduces_the_metrics_the_learner_reported(sim):
    t = analysis.load(sim.uri)
    summary = t.summary().set_index("trial_id")
    last = t.wide[t.wide.iteration == 6].set_index("trial_id")
    for trial in "ABCD":
        assert summary.final_acc[trial] == pytest.approx(last.acc_avg[trial])
        assert summary.bwt[trial] == pytest.approx(last.bwt[trial])
        assert summary.forgetting[trial] == pytest.approx(last.forgetting[trial])
        assert summary.tasks[trial] == 6


def test_ancestry_follows_exploits_through_a_cycle(sim):
    t = analysis.load(sim.uri)
    anc = t.ancestry("A")
    assert list(zip(anc.trial_id, anc.from_iteration, anc.to_iteration, strict=True)) == [
        ("A", 4, 6), ("B", 2, 4), ("A", 0, 2)]
    assert anc["config.lr"].tolist() == [0.0077, 0.0042, 0.001]
    # C was sent back from round 5 to D's round-4 checkpoint; D's rounds 1-2 were C's
    anc = t.ancestry("C")
    assert list(zip(anc.trial_id, anc.from_iteration, anc.to_iteration, strict=True)) == [
        ("C", 4, 6), ("D", 2, 4), ("C", 0, 2)]
    history = sim.state["C"]["history"]
    assert [history[i][0] for i in range(1, 7)] == ["C", "C", "D", "D", "C", "C"]
    assert t.ancestry("B").trial_id.tolist() == ["B", "A"]
    assert t.ancestry("B").to_iteration.tolist() == [6, 2]


def test_inherited_schedule_is_the_schedule_the_final_state_was_trained_with(sim):
    t = analysis.load(sim.uri)
    sched = t.schedules(inherited=True)
    for trial, state in sim.state.items():
        got = sched[(sched.trial_id == trial) & (sched.key == "lr")].sort_values("iteration")
        want = [state["history"][i] for i in range(1, 7)]
        assert got.iteration.tolist() == list(range(1, 7))
        assert list(zip(got.source_trial, got.value, strict=True)) == want, trial


def test_own_schedule_is_each_trials_config_per_round_unknown_before_first_exploit(sim):
    t = analysis.load(sim.uri)
    own = t.schedules()
    assert set(own.key) == {"lr"}
    for trial in "ABCD":
        got = own[own.trial_id == trial].set_index("iteration").value
        want = sim.live_config[trial]
        assert sorted(got.index) == sorted(want)
        for i, lr in want.items():
            if trial in "BD" and i <= 2:
                # B and D were exploited before ever being a donor: their first config is not
                # in the store
                assert math.isnan(got[i])
            else:
                assert got[i] == lr, (trial, i)


def test_family_tree_lists_each_exploit_with_its_changes(sim):
    tree = analysis.load(sim.uri).family_tree()
    assert list(zip(tree.trial_id, tree.donor, tree.iteration, strict=True)) == [
        ("B", "A", 2), ("D", "C", 2), ("A", "B", 4), ("C", "D", 4)]
    assert tree.changes.iloc[0] == "lr: 0.001 -> 0.0042"


# -- summaries --------------------------------------------------------------------------------

def seeded_sweep(tmp_path, name="seeds", seed=0, finals=None):
    """A fifo sweep: two lrs x three trials differing only by seed, plus one joint trial; each
    trial's 2-task test and validation matrices given, so every summary is known. Validation
    ranks the trials in the reverse order of test (trial 0 best on val, trial 6 on test)."""
    uri = write_spec(tmp_path / name, name, search={"scheduler": "fifo",
                                                   "metric": "val_acc_avg", "mode": "max"},
                     seed=seed)
    store = ResultStore(uri, run=1)
    finals = finals or {}
    trials, acc, metrics = [], [], []
    matrices = {}
    for i, (learner, lr) in enumerate([("finetune", 0.1)] * 3 + [("finetune", 0.01)] * 3
                                      + [("joint", 0.1)]):
        tid = f"{name}_{i:05d}"
        R = [[0.9], [finals.get(i, 0.5 + 0.05 * i), 0.8 + 0.01 * i]]
        V = [[0.85], [0.9 - 0.05 * i, 0.7]]
        matrices[tid] = R
        trials.append(trial_row(name, tid, learner, seed + i,
                                {"learner": learner, "lr": lr, "seed": seed,
                                 "stream": {"tasks": 2}}, iterations=2))
        for it, (row, val) in enumerate(zip(R, V, strict=True), start=1):
            acc += [{"sweep": name, "trial_id": tid, "iteration": it, "trained_task": it - 1,
                     "eval_task": j, "accuracy": a, "split": split}
                    for split, r in (("test", row), ("val", val)) for j, a in enumerate(r)]
            metrics += [{"sweep": name, "trial_id": tid, "iteration": it, "time_s": 1.0,
                         "name": metric, "value": float(np.mean(r))}
                        for metric, r in (("acc_avg", row), ("val_acc_avg", val))]
    store.append("trials", trials)
    store.append("accuracy", acc)
    store.append("metrics", metrics)
    return uri, matrices


def test_trial_summary_uses_platform_metrics_and_joint_reference(tmp_path):
    uri, mats = seeded_sweep(tmp_path)
    s = analysis.load(uri).summary().set_index("trial_id")
    ref = np.diag(np.array([[0.9, np.nan], mats["seeds_00006"][1]]))   # the joint trial
    for tid, R in mats.items():
        assert s.final_acc[tid] == pytest.approx(clm.average_accuracy(R))
        assert s.bwt[tid] == pytest.approx(clm.backward_transfer(R))
        assert s.forgetting[tid] == pytest.approx(clm.forgetting(R))
        assert s.intransigence[tid] == pytest.approx(clm.intransigence(R, ref))
        assert math.isnan(s.fwt[tid])                  # no R[j-1, j], no reported fwt
        assert s.test_score[tid] == pytest.approx(np.mean(R[1]))     # reported: test
        assert s.score[tid] == pytest.approx(np.mean([0.9 - 0.05 * int(tid[-1]), 0.7]))
    assert set(s.metric) == {"val_acc_avg"} and set(s.test_metric) == {"acc_avg"}
    s = analysis.load(uri).summary(reference=None)
    assert s.intransigence.isna().all()


def test_fwt_from_a_baseline_or_the_reported_metric(tmp_path):
    uri = write_spec(tmp_path / "fwt", "fwt", search={"scheduler": "fifo"})
    store = ResultStore(uri, run=1)
    R = [[0.9, 0.3, 0.2], [0.7, 0.8, 0.25], [0.6, 0.7, 0.9]]   # evaluated ahead of training
    store.append("trials", [trial_row("fwt", "t0", "finetune", 0, {"lr": 0.1})])
    store.append("accuracy", [{"sweep": "fwt", "trial_id": "t0", "iteration": i + 1,
                               "trained_task": i, "eval_task": j, "accuracy": a}
                              for i, row in enumerate(R) for j, a in enumerate(row)])
    store.append("metrics", [{"sweep": "fwt", "trial_id": "t0", "iteration": 3, "time_s": 1.0,
                              "name": "fwt", "value": 0.123}])
    t = analysis.load(uri)
    baseline = [0.1, 0.1, 0.1]
    assert t.summary(baseline=baseline).fwt.iloc[0] == pytest.approx(
        clm.forward_transfer(R, baseline))
    assert t.summary().fwt.iloc[0] == pytest.approx(0.123)


def test_groups_of_seeds_give_mean_and_sem(tmp_path):
    uri, mats = seeded_sweep(tmp_path)
    groups = analysis.load(uri).groups().set_index("group")
    assert set(groups.index) == {"finetune lr=0.1", "finetune lr=0.01", "joint lr=0.1"}
    finals = [clm.average_accuracy(mats[f"seeds_{i:05d}"]) for i in (3, 4, 5)]
    g = groups.loc["finetune lr=0.01"]
    assert g.n == 3
    assert g.final_acc_mean == pytest.approx(np.mean(finals))
    assert g.final_acc_sem == pytest.approx(np.std(finals, ddof=1) / math.sqrt(3))
    # best group first by the validation score, whatever test says
    assert list(groups.index) == ["finetune lr=0.1", "finetune lr=0.01", "joint lr=0.1"]
    assert groups.test_score_mean.is_monotonic_increasing
    assert groups.n["joint lr=0.1"] == 1 and math.isnan(groups.final_acc_sem["joint lr=0.1"])


def test_groups_span_sweeps_that_differ_only_by_seed(tmp_path):
    a, _ = seeded_sweep(tmp_path, "run-a", seed=0)
    b, _ = seeded_sweep(tmp_path, "run-b", seed=100)
    t = analysis.load([a, b])
    groups = t.groups().set_index("group")
    assert groups.n["finetune lr=0.1"] == 6 and groups.sweeps["finetune lr=0.1"] == "run-a, run-b"
    per_sweep = t.groups(by_sweep=True)
    assert len(per_sweep) == 6 and set(per_sweep.n) == {3, 1}


def test_leaderboard_ranks_by_the_sweeps_metric_and_mode(tmp_path):
    uri, _ = seeded_sweep(tmp_path)
    board = analysis.load(uri).leaderboard()
    assert board["rank"].tolist() == list(range(1, 8))
    assert board.score.is_monotonic_decreasing
    # ranked on validation, the test numbers beside it (here in the opposite order)
    assert board.trial_id.tolist() == [f"seeds_{i:05d}" for i in range(7)]
    assert board.test_score.is_monotonic_increasing and board.final_acc.is_monotonic_increasing
    spec_path = tmp_path / "seeds" / "spec.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["search"]["mode"] = "min"
    spec_path.write_text(yaml.safe_dump(spec))
    board = analysis.load(uri).leaderboard()
    assert board.score.is_monotonic_increasing
    assert "config.lr" in board and "config.stream.tasks" not in board   # only varying config


# -- plots ------------------------------------------------------------------------------------

def test_plots_draw_what_the_tables_hold(sim):
    t = analysis.load(sim.uri)
    curves = plots.plot_learning_curves(t)
    ax = curves.axes[0]
    assert len([line for line in ax.lines if line.get_linestyle() == "-"]) == 4
    heat = plots.plot_accuracy_matrix(t, "A")
    shown = heat.axes[0].images[0].get_array()
    np.testing.assert_array_equal(shown.filled(np.nan), t.matrix("A").to_numpy())
    # the colour scale spans the matrix's own range, and the colourbar shows its limits
    lo, hi = np.nanmin(t.matrix("A").to_numpy()), np.nanmax(t.matrix("A").to_numpy())
    assert heat.axes[0].images[0].get_clim() == pytest.approx((lo, hi))
    ticks = heat.axes[1].get_yticks()
    assert ticks[0] == pytest.approx(lo, abs=1e-4) and ticks[-1] == pytest.approx(hi, abs=1e-4)
    final = plots.plot_final_accuracy(t)
    assert len(final.axes[0].containers) == 2             # one errorbar per group
    tree = plots.plot_family_tree(t)
    arrows = [c for c in tree.axes[0].texts if getattr(c, "arrow_patch", None) is not None]
    assert len(arrows) == len(t.events)
    sched = plots.plot_schedules(t)
    assert sched.axes[0].get_ylabel() == "lr" and len(sched.axes[0].lines) == 4
    for fig in (curves, heat, final, tree, sched):
        png = plots.to_png(fig)
        assert png.startswith(b"\x89PNG") and len(png) > 2000


def test_plots_of_a_sweep_without_exploits_or_results_are_none(tmp_path):
    uri, _ = seeded_sweep(tmp_path)
    t = analysis.load(uri)
    assert plots.plot_family_tree(t) is None and plots.plot_schedules(t) is None
    empty = analysis.load(write_spec(tmp_path / "empty", "empty"))
    assert plots.plot_learning_curves(empty) is None and plots.plot_final_accuracy(empty) is None


# -- object storage ---------------------------------------------------------------------------

def test_load_and_report_a_sweep_on_s3(s3, tmp_path, monkeypatch):
    s3_env, _ = s3
    from lifelab.analysis.report import write_report

    with s3_env.open_output_stream("lifelab-test/sweeps/remote/spec.yaml") as out:
        out.write(yaml.safe_dump({"name": "remote", "search": {"metric": "acc_avg"}}).encode())
    uri = "s3://lifelab-test/sweeps/remote"
    store = ResultStore(uri, run=1)
    store.append("trials", [trial_row("remote", "r0", "finetune", 0, {"lr": 0.1})])
    store.append("metrics", [{"sweep": "remote", "trial_id": "r0", "iteration": 1,
                              "time_s": 1.0, "name": "acc_avg", "value": 0.75}])
    store.append("accuracy", [{"sweep": "remote", "trial_id": "r0", "iteration": 1,
                               "trained_task": 0, "eval_task": 0, "accuracy": 0.75}])
    t = analysis.load(uri)
    assert t.uris == {"remote": uri} and t.summary().final_acc.tolist() == [0.75]
    monkeypatch.chdir(tmp_path)
    path, text = write_report(uri)               # a remote sweep's report goes to ./<name>-report
    assert path == tmp_path / "remote-report" / "report.html" and path.stat().st_size > 5000
    assert "r0" in text


def test_heatmap_scale_fits_a_narrow_or_constant_matrix():
    """A task-incremental matrix within [0.95, 0.99] is not one colour on a fixed [0, 1] scale."""
    narrow = np.array([[0.95, np.nan], [0.97, 0.99]])
    assert plots.color_limits(narrow) == (0.95, 0.99)
    lo, hi = plots.color_limits(np.full((2, 2), 1.0))
    assert hi - lo == pytest.approx(0.01) and lo < 1.0 < hi
    assert plots.color_limits(np.full((1, 1), np.nan)) == (0.0, 1.0)


def test_trial_summary_carries_the_task_and_class_incremental_views(tmp_path):
    uri, _ = seeded_sweep(tmp_path)
    store = ResultStore(uri, run=1)
    store.append("metrics", [{"sweep": "seeds", "trial_id": "seeds_00000", "iteration": 2,
                              "time_s": 1.0, "name": "acc_avg_til", "value": 0.97}])
    s = analysis.load(uri).summary().set_index("trial_id")
    assert s.acc_avg_til["seeds_00000"] == 0.97
    assert s.acc_avg_til.drop("seeds_00000").isna().all() and s.acc_avg_cil.isna().all()
    groups = analysis.load(uri).groups().set_index("group")
    assert groups.acc_avg_til_mean["finetune lr=0.1"] == 0.97


# -- one flattener, one formatter, one chain --------------------------------------------------

def test_one_flattener_for_tables_and_lineage():
    from lifelab.analysis.formatting import flatten

    config = {"lr": 0.1, "stream": {"tasks": 3, "order": [[1, 2], [3]]}, "empty": {},
              "hidden": [100, 100]}
    assert flatten(config) == {"lr": 0.1, "stream.tasks": 3, "stream.order": ((1, 2), (3,)),
                               "hidden": (100, 100)}
    assert list(flatten(config)) == ["lr", "stream.tasks", "stream.order", "hidden"]
    assert flatten(None) == {}


@pytest.mark.parametrize("value, text", [
    (None, "–"), (math.nan, "–"), (pd.NA, "–"), (0.123456, "0.1235"), (3, "3"),
    ((0.5, 1), "[0.5, 1]"), ([1, [2, 3]], "[1, [2, 3]]"), ({"a": 1.0}, "{a: 1}"), ("x", "x")])
def test_one_formatter_for_every_value(value, text):
    from lifelab.analysis.formatting import fmt_value

    assert fmt_value(value) == text


def test_analysis_imports_form_one_chain():
    """formatting -> tables -> lineage -> summaries -> plots -> report: each module imports only
    modules before it, and nothing private of another module."""
    import ast
    from pathlib import Path

    order = ["formatting", "selection", "status", "tables", "lineage", "summaries", "plots",
             "space_plot", "report_page", "report", "sweep"]
    root = Path(analysis.__file__).parent
    assert set(order) <= {p.stem for p in root.glob("*.py")}
    for i, name in enumerate(order):
        for node in ast.walk(ast.parse((root / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "lifelab.analysis."):
                other = node.module.rsplit(".", 1)[1]
                assert other in order[:i], f"{name} imports {other}, which comes after it"
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{name} imports private {private} from {other}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("lifelab.analysis."):
                        other = alias.name.rsplit(".", 1)[1]
                        assert other in order[:i], f"{name} imports {other}, after it"
