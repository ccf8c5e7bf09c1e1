"""The driver's batched writes: few parts per table at any time, no row lost or doubled by a merge
or a crash inside one, damaged parts skipped and kept, status reading only what it needs."""

import os

import pandas as pd
import pytest
import yaml

from lifelab.analysis.status import sweep_status
from lifelab.platform.store import SPEC_FILE, ResultStore
from lifelab.platform.store_writer import StoreWriter


def metric_rows(trial, iterations, names=("val_acc_avg", "acc_avg", "round_s", "train_loss")):
    return [{"sweep": "s", "trial_id": trial, "iteration": i, "time_s": float(i), "name": name,
             "value": i / 100} for i in iterations for name in names]


def parts(root, table="metrics"):
    return sorted(p for p in os.listdir(root / "results" / table) if p.startswith("part-"))


def test_rows_wait_in_the_buffer_until_a_flush_writes_one_part_per_table(tmp_path):
    writer = StoreWriter(ResultStore(str(tmp_path), run=1))
    for it in range(1, 6):
        writer.add("metrics", metric_rows("a", [it]))
    writer.add("trials", [{"sweep": "s", "trial_id": "a", "status": "RUNNING"}])
    assert not (tmp_path / "results").exists()
    writer.flush()
    assert len(parts(tmp_path)) == 1 and len(parts(tmp_path, "trials")) == 1
    assert len(pd.read_parquet(tmp_path / "results" / "metrics")) == 20
    writer.flush()                                   # nothing new: nothing written
    assert len(parts(tmp_path)) == 1


def test_a_long_sweep_keeps_a_handful_of_parts_and_every_row(tmp_path):
    writer = StoreWriter(ResultStore(str(tmp_path), run=1), max_parts=8)
    most = 0
    for it in range(1, 301):
        writer.add("metrics", metric_rows("a", [it]) + metric_rows("b", [it]))
        writer.flush()
        most = max(most, len(parts(tmp_path)))
    assert most <= 8
    df = ResultStore(str(tmp_path)).read("metrics")
    assert len(df) == 300 * 2 * 4 and not df.duplicated(["trial_id", "iteration", "name"]).any()
    # sizes stay geometric: each row is rewritten a few times, not once per flush
    assert writer.files_written < 2 * 300


def test_a_crash_between_writing_a_merge_and_deleting_its_sources_doubles_nothing(tmp_path,
                                                                                  monkeypatch):
    store = ResultStore(str(tmp_path), run=1)
    writer = StoreWriter(store, max_parts=4)
    for it in range(1, 5):
        writer.add("metrics", metric_rows("a", [it]))
        writer.flush()

    def killed(self, path):           # the driver is killed right before deleting
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(ResultStore, "delete_part", killed)
    writer.add("metrics", metric_rows("a", [5]))
    with pytest.raises(KeyboardInterrupt):
        writer.flush()                    # the merged part is written, no source deleted
    monkeypatch.undo()
    assert len(parts(tmp_path)) == 6
    live = ResultStore(str(tmp_path)).read("metrics")
    assert len(live) == 5 * 4 and not live.duplicated(["trial_id", "iteration", "name"]).any()
    ResultStore(str(tmp_path)).compact_all()
    assert len(pd.read_parquet(tmp_path / "results" / "metrics")) == 5 * 4


@pytest.mark.parametrize("damage", [b"not parquet at all", "truncated", "wrong types"])
def test_a_damaged_part_is_skipped_with_one_warning_and_never_deleted(tmp_path, capsys, damage):
    store = ResultStore(str(tmp_path), run=1)
    writer = StoreWriter(store, max_parts=2)
    writer.add("metrics", metric_rows("a", [1, 2]))
    writer.flush()
    bad = tmp_path / "results" / "metrics" / "part-0-damaged.parquet"
    good = tmp_path / "results" / "metrics" / parts(tmp_path)[0]
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[:-40])
    elif damage == "wrong types":
        pd.DataFrame({"trial_id": ["x"], "iteration": ["one"], "value": ["high"]}).to_parquet(bad)
    else:
        bad.write_bytes(damage)
    live = store.read("metrics")
    assert sorted(set(live.iteration)) == [1, 2]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "part-0-damaged.parquet" in err[0] and "delete" in err[0]
    for it in (3, 4, 5):                      # merges go on around it
        writer.add("metrics", metric_rows("a", [it]))
        writer.flush()
    store.compact_all()
    assert bad.exists()
    assert sorted(set(store.read("metrics").iteration)) == [1, 2, 3, 4, 5]


def test_status_reads_only_trials_and_the_ranked_metric(tmp_path, monkeypatch):
    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump({"name": "s", "search": {}}))
    store = ResultStore(str(tmp_path), run=1)
    writer = StoreWriter(store, max_parts=6)
    for it in range(1, 41):
        writer.add("metrics", [row for t in ("a", "b") for row in metric_rows(t, [it])])
        writer.add("accuracy", [{"sweep": "s", "trial_id": "a", "iteration": it,
                                 "trained_task": 0, "eval_task": 0, "accuracy": 0.5,
                                 "split": "val"}])
        writer.flush()
    writer.add("trials", [{"sweep": "s", "trial_id": t, "status": "RUNNING"} for t in "ab"])
    writer.flush()
    scanned = []
    original = ResultStore.scan

    def counting(self, table, found, *args, **kwargs):
        scanned.extend((table, os.path.basename(p)) for p in found)
        return original(self, table, found, *args, **kwargs)
    monkeypatch.setattr(ResultStore, "scan", counting)
    table = sweep_status(str(tmp_path))
    assert list(table.iteration) == [40, 40]
    assert {t for t, _ in scanned} == {"trials", "metrics"}
    assert len(scanned) <= 1 + 6


def test_tune_saves_its_state_less_often_for_big_sweeps_and_on_object_storage(monkeypatch):
    from lifelab.errors import ConfigError
    from lifelab.searches.launch import state_period_s

    monkeypatch.delenv("LIFELAB_STATE_PERIOD_S", raising=False)
    assert state_period_s(4) == 2.0                      # rows flushed every 2 s: resume is near
    assert state_period_s(4, remote=True) == 10.0        # each save and flush costs requests
    assert state_period_s(1000) == 20.0 and state_period_s(10**6) == 30.0
    monkeypatch.setenv("LIFELAB_STATE_PERIOD_S", "5")
    assert state_period_s(1000, remote=True) == 5.0
    for bad in ("soon", "0", "-3", "inf"):
        monkeypatch.setenv("LIFELAB_STATE_PERIOD_S", bad)
        with pytest.raises(ConfigError, match="LIFELAB_STATE_PERIOD_S"):
            state_period_s(4)


@pytest.mark.parametrize("command", ["status", "report"])
def test_status_and_report_of_a_sweep_with_a_damaged_part_warn_in_one_line(tmp_path, capsys,
                                                                        command):
    from lifelab import cli

    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump({"name": "s", "search": {}}))
    writer = StoreWriter(ResultStore(str(tmp_path), run=1))
    writer.add("metrics", metric_rows("a", [1, 2]))
    writer.add("trials", [{"sweep": "s", "trial_id": "a", "learner": "finetune",
                           "status": "TERMINATED", "config_json": "{}"}])
    writer.flush()
    bad = tmp_path / "results" / "metrics" / "part-0-cut.parquet"
    bad.write_bytes(b"PAR1 cut short")
    args = [command, str(tmp_path)] + (["--out", str(tmp_path / "report")]
                                       if command == "report" else [])
    assert cli.main(args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "delete the file" in err[0]
    assert bad.exists()
