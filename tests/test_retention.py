"""Checkpoint retention: disk grows with trials, not trials x rounds, and nothing PBT or a resume
still needs is ever deleted."""

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.fs as pafs
from ray import tune

from lifelab.searches.launch import run_sweep
from lifelab.searches.retention import PINNED_SAVES, CheckpointRetention
from lifelab.searches.spec import spec_from_dict


class FakeTrial:
    """What retention reads of a Tune trial: its checkpoints and where they live."""

    def __init__(self, root: Path, name: str):
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.results = []
        self.latest = None
        self.run_metadata = SimpleNamespace(
            checkpoint_manager=SimpleNamespace(_checkpoint_results=self.results))
        self.storage = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(),
                                       trial_fs_path=str(self.dir))

    def save(self, index: int):
        path = self.dir / f"checkpoint_{index:06d}"
        path.mkdir()
        (path / "learner.pt").write_bytes(b"x" * 100)
        checkpoint = tune.Checkpoint(str(path))
        self.results.append(SimpleNamespace(checkpoint=checkpoint))
        self.latest = checkpoint
        return checkpoint

    @property
    def checkpoint(self):
        return self.latest

    def kept(self) -> list[str]:
        return sorted(p.name for p in self.dir.glob("checkpoint_*"))


def register(retention, trials, trial, index):
    retention.on_checkpoint(0, trials, trial, trial.save(index))


def test_only_the_latest_checkpoint_of_each_trial_is_kept(tmp_path):
    trials = [FakeTrial(tmp_path, "a"), FakeTrial(tmp_path, "b")]
    retention = CheckpointRetention()
    for index in range(5):
        for trial in trials:
            register(retention, trials, trial, index)
        retention.prune(trials)
    assert [t.kept() for t in trials] == [["checkpoint_000004"]] * 2
    # and Tune's bookkeeping (what it saves in its experiment state) shrinks with it
    assert [len(t.results) for t in trials] == [1, 1]
    assert retention.summary().startswith("2 checkpoints on storage")


def test_a_checkpoint_pbt_holds_for_an_exploit_is_kept_until_released(tmp_path):
    donor, other = FakeTrial(tmp_path, "donor"), FakeTrial(tmp_path, "other")
    held = SimpleNamespace(last_checkpoint=None)
    scheduler = SimpleNamespace(_trial_state={donor: held})
    retention = CheckpointRetention(scheduler)
    register(retention, [donor, other], donor, 0)
    held.last_checkpoint = donor.checkpoint            # top trial at a perturbation
    for index in range(1, 4):
        register(retention, [donor, other], donor, index)
        retention.prune([donor, other])
    assert donor.kept() == ["checkpoint_000000", "checkpoint_000003"]
    held.last_checkpoint = None
    register(retention, [donor, other], donor, 4)
    retention.prune([donor, other])
    assert donor.kept() == ["checkpoint_000004"]


def test_a_trial_that_exploited_keeps_its_donors_checkpoint_alive(tmp_path):
    donor, taker = FakeTrial(tmp_path, "donor"), FakeTrial(tmp_path, "taker")
    retention = CheckpointRetention()
    register(retention, [donor, taker], donor, 0)
    register(retention, [donor, taker], taker, 0)
    taker.latest = donor.checkpoint                     # exploit: it continues from there
    register(retention, [donor, taker], donor, 1)
    retention.prune([donor, taker])
    assert donor.kept() == ["checkpoint_000000", "checkpoint_000001"]
    assert taker.kept() == []


def test_checkpoints_named_by_the_last_saved_states_survive_until_newer_saves(tmp_path):
    trial = FakeTrial(tmp_path, "a")
    retention = CheckpointRetention()
    retention.trials = [trial]
    register(retention, [trial], trial, 0)
    retention.get_state()                               # Tune saves its state: names 0
    for index in range(1, 3):
        register(retention, [trial], trial, index)
        retention.prune([trial])
    assert trial.kept() == ["checkpoint_000000", "checkpoint_000002"]
    for index in range(3, 6):                           # three newer saves release it
        register(retention, [trial], trial, index)
        retention.get_state()
    assert trial.kept() == ["checkpoint_000003", "checkpoint_000004", "checkpoint_000005"]


def test_a_resume_deletes_what_the_crashed_run_wrote_after_its_last_saved_state(tmp_path):
    trial = FakeTrial(tmp_path, "a")
    trial.save(3)
    for index in (4, 5):                                # written, then the driver died
        (trial.dir / f"checkpoint_{index:06d}").mkdir()
    retention = CheckpointRetention(resumed=True)
    retention.on_step_end(0, [trial])
    assert trial.kept() == ["checkpoint_000003"]


def test_a_resume_of_a_moved_sweep_keeps_what_its_state_names_at_the_old_place(tmp_path):
    trial = FakeTrial(tmp_path / "new", "a")
    trial.save(3)
    (trial.dir / "checkpoint_000004").mkdir()
    old_place = tune.Checkpoint(str(tmp_path / "old" / "a" / "checkpoint_000003"))
    trial.results[0].checkpoint = trial.latest = old_place     # as restored from its state
    retention = CheckpointRetention(resumed=True)
    retention.on_step_end(0, [trial])
    assert trial.kept() == ["checkpoint_000003"]


def test_pbt_with_aggressive_exploits_completes_with_bounded_checkpoints(ray_session, short_tmp):
    rounds, samples, scheduler = 12, 4, "pbt"
    spec = spec_from_dict({
        "name": f"keep-{scheduler}", "learner": "finetune",
        "stream": {"tasks": 2, "steps_per_task": 12},
        "config": {"lr": {"loguniform": [1e-4, 1e-1]}, "hidden": [8], "steps_per_round": 1},
        "search": {"scheduler": scheduler, "samples": samples, "perturbation_interval": 1,
                   "quantile_fraction": 0.5, "mutations": {"lr": [1e-4, 1e-1]}},
        "stop": {"rounds": rounds}})
    sweep, _ = run_sweep(spec, storage=str(short_tmp), progress_s=0)
    trials = pd.read_parquet(f"{sweep}/results/trials")
    assert set(trials.status) == {"TERMINATED"}, trials.error.tolist()
    assert (trials.iterations == rounds).all()
    assert len(pd.read_parquet(f"{sweep}/results/events")) > 0      # it did exploit
    checkpoints = list(Path(sweep, "tune").glob("*/checkpoint_*"))
    # each trial's latest, those the last saved states name, PBT's top half: not x rounds
    bound = samples * (1 + PINNED_SAVES) + samples // 2
    assert len(checkpoints) <= bound < samples * rounds, sorted(map(str, checkpoints))
