"""The Parquet store: atomic parts, direct pandas reads, and one live row per key after resume."""

import os

import pandas as pd
import pytest

from lifelab.errors import StorageError
from lifelab.platform.store import ResultStore, read_spec


def metric_rows(trial, iterations, value, name="acc_avg"):
    return [{"sweep": "s", "trial_id": trial, "iteration": i, "time_s": float(i), "name": name,
             "value": value} for i in iterations]


def test_each_append_is_a_new_part_readable_by_pandas(tmp_path):
    store = ResultStore(str(tmp_path), run=1)
    store.append("metrics", metric_rows("a", [1, 2], 0.5))
    store.append("metrics", metric_rows("b", [1], 0.7))
    parts = os.listdir(tmp_path / "results" / "metrics")
    assert len(parts) == 2 and all(p.startswith("part-") for p in parts)
    df = pd.read_parquet(tmp_path / "results" / "metrics")
    assert sorted(zip(df.trial_id, df.iteration, strict=True)) == [("a", 1), ("a", 2), ("b", 1)]
    assert set(df.columns) >= {"sweep", "trial_id", "iteration", "time_s", "name", "value"}


def test_temporary_files_are_invisible_to_readers(tmp_path):
    store = ResultStore(str(tmp_path), run=1)
    store.append("metrics", metric_rows("a", [1], 0.5))
    # a writer that died before its rename leaves a hidden temporary part behind
    (tmp_path / "results" / "metrics" / ".tmp-part-x.parquet").write_bytes(b"half a file")
    assert len(pd.read_parquet(tmp_path / "results" / "metrics")) == 1
    assert len(store.read("metrics")) == 1
    store.compact_all()     # at the end of a sweep: no writer is left to finish it
    assert os.listdir(tmp_path / "results" / "metrics")[0].startswith("part-")
    assert len(os.listdir(tmp_path / "results" / "metrics")) == 1


def test_resumed_run_supersedes_rows_after_its_restore_point(tmp_path):
    first = ResultStore(str(tmp_path), run=1)
    first.append("metrics", metric_rows("a", [1, 2, 3, 4], 0.1))   # crashed after iteration 4
    first.append("metrics", metric_rows("b", [1, 2], 0.1))
    second = ResultStore(str(tmp_path), run=2)                       # restored from checkpoint 2
    second.append("metrics", metric_rows("a", [3, 4, 5], 0.9))
    live = second.read("metrics")
    a = live[live.trial_id == "a"].set_index("iteration")["value"]
    assert a.to_dict() == {1: 0.1, 2: 0.1, 3: 0.9, 4: 0.9, 5: 0.9}
    assert len(live[live.trial_id == "b"]) == 2


def test_stale_rows_beyond_a_shorter_resumed_run_are_dropped(tmp_path):
    ResultStore(str(tmp_path), run=1).append("metrics", metric_rows("a", [1, 2, 3, 4], 0.1))
    second = ResultStore(str(tmp_path), run=2)
    second.append("metrics", metric_rows("a", [3], 0.9))    # e.g. stopped early after resume
    assert second.read("metrics").iteration.tolist() == [1, 2, 3]


def test_compact_leaves_one_part_with_exactly_one_row_per_key(tmp_path):
    ResultStore(str(tmp_path), run=1).append("metrics", metric_rows("a", [1, 2, 3], 0.1))
    second = ResultStore(str(tmp_path), run=2)
    second.append("metrics", metric_rows("a", [2, 3], 0.9))
    second.append("metrics", metric_rows("a", [2, 3], 0.9))   # an exact repeat (crash mid-compact)
    second.compact_all()
    assert len(os.listdir(tmp_path / "results" / "metrics")) == 1
    df = pd.read_parquet(tmp_path / "results" / "metrics")
    assert not df.duplicated(["trial_id", "iteration", "name"]).any()
    assert df.sort_values("iteration").value.tolist() == [0.1, 0.9, 0.9]


def test_trials_table_keeps_latest_status(tmp_path):
    store = ResultStore(str(tmp_path), run=1)
    base = {"sweep": "s", "trial_id": "a", "learner": "finetune", "seed": 0, "config_json": "{}",
            "error": "", "iterations": 0, "node": "n", "ray_version": "r", "torch_version": "t"}
    store.append("trials", [{**base, "status": "RUNNING", "written_at": 1.0}])
    store.append("trials", [{**base, "status": "TERMINATED", "written_at": 2.0}])
    assert store.read("trials").status.tolist() == ["TERMINATED"]
    store.compact("trials")
    assert pd.read_parquet(tmp_path / "results" / "trials").status.tolist() == ["TERMINATED"]


def test_empty_table_reads_with_schema(tmp_path):
    df = ResultStore(str(tmp_path)).read("accuracy")
    assert df.empty and "eval_task" in df.columns


def test_unwritable_storage_is_a_storage_error_naming_the_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = ResultStore(str(blocker / "sweep"))
    with pytest.raises(StorageError, match="writable"):
        store.append("metrics", metric_rows("a", [1], 0.5))


def test_unknown_table_is_rejected(tmp_path):
    with pytest.raises(StorageError, match="unknown results table"):
        ResultStore(str(tmp_path)).append("metric", [])


def test_read_spec_rejects_missing_and_non_sweep_dirs(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        read_spec(str(tmp_path / "nope"))
    with pytest.raises(StorageError, match="not a lifelab sweep"):
        read_spec(str(tmp_path))


def test_two_matrix_rows_finished_in_one_round_are_both_kept(tmp_path):
    store = ResultStore(str(tmp_path), run=1)
    rows = [{"sweep": "s", "trial_id": "a", "iteration": 1, "trained_task": task,
             "eval_task": 0, "accuracy": acc} for task, acc in ((0, 0.9), (1, 0.7))]
    store.append("accuracy", rows)
    store.compact("accuracy")
    assert sorted(store.read("accuracy").accuracy) == [0.7, 0.9]
