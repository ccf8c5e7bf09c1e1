"""One ownership rule for every table: after crashes and resumes, each (trial, iteration) belongs
to one run, the same in metrics, accuracy and events; property tests over synthetic histories."""

import tempfile

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelab.platform.store import KEYS, ResultStore, live_rows, takeovers

TABLES = ("metrics", "accuracy", "events")


def result(trial, it, run, exploit=False, accuracy=False):
    """The rows one reported result writes, as the recording callback writes them."""
    value = run * 1000.0 + it
    rows = {"metrics": [{"sweep": "s", "trial_id": trial, "iteration": it, "time_s": value,
                         "name": name, "value": value, "run": run}
                        for name in ("acc_avg", "train_loss")],
            "accuracy": [], "events": []}
    if accuracy:
        rows["accuracy"] = [{"sweep": "s", "trial_id": trial, "iteration": it,
                             "trained_task": it // 3, "eval_task": j, "accuracy": value,
                             "split": split, "run": run}
                            for j in range(2) for split in ("val", "test")]
    if exploit:      # the event names the donor checkpoint's iteration, one before this result
        rows["events"] = [{"sweep": "s", "trial_id": trial, "iteration": it - 1,
                           "kind": "exploit", "donor": "d", "old_config_json": "{}",
                           "new_config_json": "{}", "time": value, "run": run}]
    return rows


@st.composite
def histories(draw):
    """Runs of a sweep, each resuming every trial from some earlier point of its live history
    and reporting on from there; a run may die after a result's metrics but before the rest of
    it, and may write a part twice (a crash in the middle of a compaction)."""
    trials = [f"t{i}" for i in range(draw(st.integers(1, 3)))]
    n_runs = draw(st.integers(1, 4))
    frames = {t: [] for t in TABLES}
    owner: dict[tuple[str, int], int] = {}          # the model: who owns each iteration
    end = dict.fromkeys(trials, 0)
    for run in range(1, n_runs + 1):
        for trial in trials:
            restore = draw(st.integers(0, end[trial]))
            last = draw(st.integers(restore, restore + 6))
            if last == restore:
                continue                             # this run never got to the trial
            for it in [i for i in owner if i[0] == trial and i[1] > restore]:
                del owner[it]
            for it in range(restore + 1, last + 1):
                rows = result(trial, it, run, exploit=draw(st.booleans()) and it > 1,
                              accuracy=it % 3 == 0)
                died_mid_result = it == last and run < n_runs and draw(st.booleans())
                for table in TABLES if not died_mid_result else ("metrics",):
                    repeats = 2 if draw(st.integers(0, 9)) == 0 else 1
                    frames[table] += rows[table] * repeats
                owner[(trial, it)] = run
            end[trial] = last
    return {t: pd.DataFrame(rows, columns=list(ROW_COLUMNS[t])) for t, rows in frames.items()}, \
        owner


ROW_COLUMNS = {t: tuple(result("x", 3, 1, True, True)[t][0]) for t in TABLES}


def owners_by_table(live: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """(trial, result iteration) -> run, per table; each key must map to one run."""
    out = {}
    for table, df in live.items():
        its = df.iteration + 1 if table == "events" else df.iteration
        pairs = pd.DataFrame({"trial": df.trial_id.astype(str), "it": its, "run": df.run})
        pairs = pairs.drop_duplicates()
        assert not pairs.duplicated(["trial", "it"]).any(), f"{table}: two runs own one iteration"
        out[table] = {(t, i): r for t, i, r in zip(pairs.trial, pairs.it, pairs.run, strict=True)}
    return out


def check(live: dict[str, pd.DataFrame], model: dict) -> None:
    for table, df in live.items():
        assert not df.duplicated(list(KEYS[table])).any(), f"{table}: a key twice"
    owned = owners_by_table(live)
    assert owned["metrics"] == model                   # exactly the live history, no stale row
    for table in ("accuracy", "events"):
        for key, run in owned[table].items():
            assert owned["metrics"].get(key) == run, (table, key, run)


@settings(max_examples=100, deadline=None)
@given(histories())
def test_every_table_agrees_on_which_run_owns_each_iteration(history):
    frames, model = history
    owners = takeovers(frames)
    check({t: live_rows(t, frames[t], owners) for t in TABLES}, model)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(histories(), st.permutations(TABLES))
def test_reads_and_compaction_in_any_order_keep_exactly_the_live_rows(history, order):
    frames, model = history
    with tempfile.TemporaryDirectory(prefix="ll-") as root:
        for table, df in frames.items():
            for run, rows in df.groupby("run"):
                ResultStore(root, run=int(run)).append(table, rows.to_dict("records"))
        store = ResultStore(root)
        check({t: store.read(t) for t in TABLES}, model)
        for table in order:                 # each compaction sees the others' earlier state
            store.compact(table)
        raw = {t: pd.read_parquet(f"{root}/results/{t}") if not frames[t].empty
               else frames[t] for t in TABLES}
        check(raw, model)


def test_an_exploit_the_resumed_run_never_made_is_superseded(tmp_path):
    first, second = ResultStore(str(tmp_path), run=1), ResultStore(str(tmp_path), run=2)
    for it in range(1, 7):
        for table, rows in result("a", it, 1, exploit=it == 6).items():
            first.append(table, rows)
    for it in range(5, 8):                    # resumed from checkpoint 4, no exploit this time
        for table, rows in result("a", it, 2).items():
            second.append(table, rows)
    assert second.read("events").empty
    assert second.read("metrics").groupby("iteration").run.first().to_dict() == \
        {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2, 7: 2}


def test_an_accuracy_row_never_outlives_the_metrics_of_its_run(tmp_path):
    first, second = ResultStore(str(tmp_path), run=1), ResultStore(str(tmp_path), run=2)
    for it in range(1, 10):
        for table, rows in result("a", it, 1, accuracy=it % 3 == 0).items():
            first.append(table, rows)
    for it in range(5, 8):        # the new run's first accuracy row would come at 9, not 6
        second.append("metrics", result("a", it, 2)["metrics"])
    accuracy = second.read("accuracy")
    assert set(accuracy.iteration) == {3} and set(accuracy.run) == {1}
    second.compact_all()
    assert set(pd.read_parquet(tmp_path / "results" / "accuracy").iteration) == {3}


def test_a_third_run_restoring_from_further_back_supersedes_both(tmp_path):
    for run, its in ((1, range(1, 9)), (2, range(6, 8)), (3, range(3, 5))):
        ResultStore(str(tmp_path), run=run).append(
            "metrics", [r for it in its for r in result("a", it, run)["metrics"]])
    live = ResultStore(str(tmp_path)).read("metrics")
    assert live.groupby("iteration").run.first().to_dict() == {1: 1, 2: 1, 3: 3, 4: 3}
