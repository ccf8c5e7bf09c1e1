"""What keeps a resume honest, without starting Ray: GroupedPBT after a restore or with more
trials than slots neither livelocks (the same few trials cycling through exploits while the donors
never run) nor deadlocks (synch: every trial PAUSED short of a sync point none may run to); the
watchdog names what cannot go on; checkpoints come from where the sweep is now; a recording
callback unpickled from Tune's state writes nowhere."""

import pickle
from types import SimpleNamespace

import pytest
from fakes import FakeController

from lifelab.searches.guards import CannotResumeError, StallGuard
from lifelab.searches.schedulers import GroupedPBT


class FakeTrial:
    def __init__(self, trial_id, status="PAUSED", restored_at=0):
        self.trial_id, self.status, self.config = trial_id, status, {"learner": "finetune"}
        self.experiment_tag = trial_id
        self.evaluated_params = {}
        latest = SimpleNamespace(metrics={"training_iteration": restored_at}) \
            if restored_at else None
        self.run_metadata = SimpleNamespace(checkpoint_manager=SimpleNamespace(
            latest_checkpoint_result=latest, checkpoint_config=SimpleNamespace(num_to_keep=None)))

    def is_finished(self):
        return self.status in ("TERMINATED", "ERROR")




def pbt(synch=False):
    return GroupedPBT(group_by=None, time_attr="training_iteration", metric="val_acc_avg",
                      mode="max", perturbation_interval=1, quantile_fraction=0.5,
                      hyperparam_mutations={"lr": [0.1, 0.01]}, synch=synch)


def test_among_equally_trained_trials_the_one_that_reported_longest_ago_runs_first():
    trials = [FakeTrial(f"t{i}") for i in range(6)]
    controller, scheduler = FakeController(trials), pbt()
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
        scheduler.population[trial].last_train_time = 8
    # t3..t5 reported (and were paused) first; t0..t2 since, and were sent back to 8 by exploits
    for trial in trials[3:] + trials[:3]:
        scheduler._results += 1
        scheduler._reported[trial.trial_id] = scheduler._results
    assert scheduler.choose_trial_to_run(controller) is trials[3]
    scheduler.population[trials[4]].last_train_time = 7      # least trained still goes first
    assert scheduler.choose_trial_to_run(controller) is trials[4]


def test_a_restored_trial_perturbs_an_interval_after_where_it_continues():
    trial = FakeTrial("t0", status="PENDING", restored_at=6)
    scheduler = pbt(synch=True)
    scheduler.on_trial_add(FakeController([trial]), trial)
    assert scheduler.population[trial].last_perturbation_time == 6
    assert scheduler.next_sync == 7


def test_synch_never_leaves_every_trial_at_or_past_the_next_sync_point():
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    controller, scheduler = FakeController(trials), pbt(synch=True)
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
        scheduler.population[trial].last_train_time = 7      # all in step after a restore
    scheduler.next_sync = 7                       # where Tune's PBT would leave it
    assert PBT_CHOICE(scheduler, controller) is None            # Tune's own choice: nobody
    scheduler._keep_next_sync_reachable(controller)
    assert scheduler.next_sync == 8
    assert scheduler.choose_trial_to_run(controller) is not None


def PBT_CHOICE(scheduler, controller):
    from ray.tune.schedulers import PopulationBasedTraining
    return PopulationBasedTraining.choose_trial_to_run(scheduler, controller)


def guard(**kwargs):
    spec = SimpleNamespace(name="sw", search=SimpleNamespace(synch=True))
    return StallGuard(spec, **kwargs)


def test_a_population_that_only_repeats_rounds_is_stopped_in_one_line():
    watchdog, trials = guard(repeats=5), [FakeTrial("a"), FakeTrial("b")]
    for it in (1, 2, 3):
        watchdog.on_trial_result(0, trials, trials[0], {"training_iteration": it})
    for _ in range(5):                          # sent back to 3 by exploits, again and again
        watchdog.on_trial_result(0, trials, trials[0], {"training_iteration": 3})
        watchdog.on_trial_result(0, trials, trials[1], {"training_iteration": 0})
    with pytest.raises(CannotResumeError, match="makes no progress.*perturbation_interval"):
        watchdog.on_step_end(0, trials)


def test_progress_resets_the_count():
    watchdog, trials = guard(repeats=3), [FakeTrial("a")]
    for it in (1, 1, 2, 2, 3, 3, 4):
        watchdog.on_trial_result(0, trials, trials[0], {"training_iteration": it})
    watchdog.on_step_end(0, trials)


def test_a_population_all_paused_with_none_started_is_stopped_naming_the_fix():
    trials = [FakeTrial("a"), FakeTrial("b"), FakeTrial("c", status="TERMINATED")]
    patient = guard(stuck_s=3600.0)
    patient.on_step_end(0, trials)                        # paused, but not for long yet
    assert patient.paused_since is not None
    trials[0].status = "PENDING"                           # a trial starting: not stuck
    patient.on_step_end(0, trials)
    assert patient.paused_since is None
    trials[0].status = "PAUSED"
    with pytest.raises(CannotResumeError, match=r"2 unfinished trials .* search\.synch: false"):
        guard(stuck_s=0.0).on_step_end(0, trials)


def test_synch_perturbs_every_group_not_only_the_reporting_trials():
    scheduler = GroupedPBT(group_by="learner", time_attr="training_iteration",
                           metric="val_acc_avg", mode="max", perturbation_interval=1,
                           quantile_fraction=0.5, hyperparam_mutations={"lr": [0.1, 0.01]},
                           synch=True)
    trials = {}
    for name, learner, score in (("j1", "joint", 0.9), ("j2", "joint", 0.8),
                                 ("f1", "finetune", 0.5), ("f2", "finetune", 0.4)):
        trials[name] = FakeTrial(name)
        trials[name].config = {"learner": learner}
        scheduler.population[trials[name]] = SimpleNamespace(last_score=score)
    scheduler._group = "joint"                    # as while a joint trial's result is handled
    lower, upper = scheduler._quantiles()
    assert {t.trial_id for t in lower} == {"j2", "f2"}
    assert {t.trial_id for t in upper} == {"j1", "f1"}


def restored_trial(tmp_path, checkpoint_path):
    """A trial as Tune restores it into `tmp_path/new/tune`, continuing from `checkpoint_path`."""
    import pyarrow.fs as pafs
    from ray import tune

    trial = FakeTrial("t0", status="PENDING")
    trial.storage = SimpleNamespace(experiment_fs_path=str(tmp_path / "new" / "tune"),
                                    storage_filesystem=pafs.LocalFileSystem())
    trial.run_metadata.checkpoint_manager.latest_checkpoint_result = SimpleNamespace(
        checkpoint=tune.Checkpoint(path=str(checkpoint_path)), metrics={})
    return trial


def test_a_donors_checkpoint_is_taken_from_where_the_sweep_is_now(tmp_path):
    from lifelab.searches.guards import ResumeCheck

    donor = tmp_path / "new" / "tune" / "LearnerTrainable_donor" / "checkpoint_000003"
    donor.mkdir(parents=True)
    # Tune moved the trial's own checkpoints along; one it took from a donor names the old place
    trial = restored_trial(tmp_path, tmp_path / "old" / "tune" / donor.parent.name / donor.name)
    ResumeCheck("new", {"t0"}).on_step_begin(0, [trial])
    latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
    assert latest.checkpoint.path == str(donor)


def test_a_missing_checkpoint_stops_the_resume_before_any_trial_starts(tmp_path):
    from lifelab.searches.guards import ResumeCheck

    trial = restored_trial(tmp_path, tmp_path / "new" / "tune" / "gone" / "checkpoint_000001")
    with pytest.raises(CannotResumeError, match=r"trial t0 .* is missing: restore the sweep dir"):
        ResumeCheck("new", {"t0"}).on_step_begin(0, [trial])


def test_a_restore_tune_gave_up_on_is_not_quietly_a_new_experiment():
    from lifelab.searches.guards import ResumeCheck

    with pytest.raises(CannotResumeError, match="could not restore the saved experiment"):
        ResumeCheck("sw", {"t0", "t1"}).on_step_begin(0, [])       # Tune restarted: no trials


def test_a_recording_callback_from_tunes_pickle_refuses_to_write_anywhere():
    from lifelab.errors import StorageError
    from lifelab.searches.recording import RecordingCallback

    restored = pickle.loads(pickle.dumps(RecordingCallback("/where/it/started", "sw")))
    assert restored.sweep_uri is None
    with pytest.raises(StorageError, match="lifelab resume SWEEP_DIR"):
        restored.setup()
