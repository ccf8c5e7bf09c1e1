"""Pins exactly what lifelab relies on among Ray Tune's private parts (all reached through
lifelab/searches/ray_internals.py), without starting Ray: after a Ray upgrade, this file fails
first and names what moved."""

import inspect
import math
from types import SimpleNamespace

from fakes import FakeController
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2

from lifelab.searches.ray_internals import (
    PBTHooks,
    checkpoint_results,
    latest_checkpoint_result,
    pbt_population,
)
from lifelab.searches.schedulers import GroupedPB2


class FakeTrial:
    def __init__(self, trial_id, config=None, status="RUNNING"):
        self.trial_id, self.status = trial_id, status
        self.config = dict(config or {"lr": 0.1})
        self.experiment_tag = trial_id
        self.evaluated_params = {}
        self.run_metadata = SimpleNamespace(checkpoint_manager=SimpleNamespace(
            latest_checkpoint_result=None, checkpoint_config=SimpleNamespace(num_to_keep=None)))

    def is_finished(self):
        return self.status in ("TERMINATED", "ERROR")

    def __repr__(self):
        return self.trial_id




class Probe(PBTHooks, PopulationBasedTraining):
    """Records which of lifelab's hooks Ray's PBT calls, and in which order."""

    def __init__(self, **kwargs):
        super().__init__(time_attr="training_iteration", metric="score", mode="max",
                         perturbation_interval=2, quantile_fraction=0.5,
                         hyperparam_mutations={"lr": [0.1, 0.01]}, **kwargs)
        self.calls = []

    def save_trial_state(self, state, time, result, trial):
        self.calls.append("save_trial_state")
        return super().save_trial_state(state, time, result, trial)

    def quantiles(self):
        self.calls.append("quantiles")
        return super().quantiles()

    def checkpoint_or_exploit(self, trial, tune_controller, upper, lower):
        self.calls.append(("checkpoint_or_exploit", trial, tuple(upper), tuple(lower)))


def population(n=2, **kwargs):
    trials = [FakeTrial(f"t{i}") for i in range(n)]
    scheduler, controller = Probe(**kwargs), FakeController(trials)
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
    return scheduler, controller, trials


def test_each_trial_has_the_state_fields_lifelab_reads_and_writes():
    scheduler, _, trials = population()
    state = scheduler.population[trials[0]]
    assert (state.last_score, state.last_checkpoint) == (None, None)
    assert (state.last_train_time, state.last_perturbation_time) == (0, 0)
    assert scheduler.interval == 2 and scheduler.synch is False
    assert scheduler.mutations == {"lr": [0.1, 0.01]}
    synch, *_ = population(synch=True)
    assert synch.synch is True and synch.next_sync == 2      # one interval from the start


def test_a_result_at_a_perturbation_reaches_lifelabs_hooks_in_order():
    scheduler, controller, (a, b) = population()
    for trial, score in ((a, 0.9), (b, 0.1)):
        scheduler.on_trial_result(controller, trial, {"training_iteration": 1, "score": score})
    assert scheduler.calls == []                              # before the interval: nothing
    scheduler.on_trial_result(controller, a, {"training_iteration": 2, "score": 0.9})
    scheduler.on_trial_result(controller, b, {"training_iteration": 2, "score": 0.1})
    assert scheduler.calls[:2] == ["save_trial_state", "quantiles"]
    assert scheduler.calls[-1] == ("checkpoint_or_exploit", b, (a,), (b,))
    assert scheduler.population[b].last_score == 0.1
    assert scheduler.population[b].last_perturbation_time == 2


def test_quantiles_put_an_infinitely_bad_score_last_and_skip_nan_and_finished_trials():
    # a diverged member reports the worst value of the metric so that PBT exploits it
    scheduler, _, trials = population(n=5)
    scores = [0.5, -math.inf, math.nan, 0.7, 0.9]
    for trial, score in zip(trials, scores, strict=True):
        scheduler.population[trial].last_score = score
    trials[4].status = "TERMINATED"
    lower, upper = scheduler._quantiles()
    assert lower == [trials[1]] and upper == [trials[3]]


def test_ray_calls_the_private_hooks_lifelab_routes_with_these_arguments():
    pbt = PopulationBasedTraining
    calls = {pbt.on_trial_result: ["self._quantiles()", "self._save_trial_state(",
                                   "self._checkpoint_or_exploit("],
             pbt._checkpoint_or_exploit: ["self._exploit(tune_controller, trial, trial_to_clone)"],
             pbt._exploit: ["self._get_new_config(trial, trial_to_clone)"]}
    for method, names in calls.items():
        source = inspect.getsource(method)
        for name in names:
            assert name in source, f"{method.__qualname__} no longer calls {name}"
    for method, params in ((pbt._checkpoint_or_exploit,
                            ["self", "trial", "tune_controller", "upper_quantile",
                             "lower_quantile"]),
                           (pbt._exploit, ["self", "tune_controller", "trial", "trial_to_clone"]),
                           (pbt._get_new_config, ["self", "trial", "trial_to_clone"]),
                           (pbt._save_trial_state, ["self", "state", "time", "result", "trial"]),
                           (PB2._get_new_config, ["self", "trial", "trial_to_clone"]),
                           (PB2._save_trial_state, ["self", "state", "time", "result", "trial"])):
        assert list(inspect.signature(method).parameters) == params, method.__qualname__


def test_exploring_reads_the_mutations_at_that_moment():
    scheduler, _, (trial, donor) = population()
    donor.config = {"lr": 0.1, "hidden": 8}
    new, _ = scheduler._get_new_config(trial, donor)
    assert new["lr"] in (0.1, 0.01) and new["hidden"] == 8
    scheduler.mutations = {}                          # lifelab narrows them per learner
    assert scheduler._get_new_config(trial, donor)[0] == donor.config


def test_synch_runs_only_trials_short_of_the_next_sync_point():
    scheduler, controller, trials = population(synch=True)
    for trial in trials:
        trial.status = "PAUSED"
        scheduler.population[trial].last_train_time = 2
    assert PopulationBasedTraining.choose_trial_to_run(scheduler, controller) is None
    scheduler.next_sync = 3
    assert PopulationBasedTraining.choose_trial_to_run(scheduler, controller) in trials


def test_pb2_learns_from_a_reward_table_lifelab_keeps_finite():
    pb2 = GroupedPB2(group_by=None, time_attr="training_iteration", metric="score", mode="max",
                     perturbation_interval=1, hyperparam_bounds={"lr": [0.01, 0.1]})
    trials = [FakeTrial(f"t{i}", {"lr": 0.05}) for i in range(2)]
    controller = FakeController(trials)
    for trial in trials:
        pb2.on_trial_add(controller, trial)
    for trial, score in zip(trials, (0.8, -math.inf), strict=True):     # t1 diverged
        state = pb2.population[trial]
        pb2._save_trial_state(state, 1, {"training_iteration": 1, "score": score}, trial)
        assert state.last_score == score
    assert list(pb2.data.columns) == ["Trial", "Time", "lr", "Reward"]
    assert pb2.data.Trial.tolist() == ["t0"] and pb2.data.Reward.tolist() == [0.8]


def test_the_tune_controller_internals_of_the_worker_loss_retry():
    from ray.tune.execution.tune_controller import TuneController

    method = getattr(TuneController._process_trial_failure, "__wrapped__",
                     TuneController._process_trial_failure)
    assert list(inspect.signature(method).parameters) == ["self", "trial", "exception"]
    init = inspect.getsource(TuneController.__init__)
    assert "self._resetting_trials" in init and "self._trial_to_actor" in init
    assert callable(TuneController._set_trial_status)


def test_state_saves_go_through_save_to_dir_before_the_sync_to_storage():
    from ray.train._internal.storage import StorageContext
    from ray.tune.callback import Callback, CallbackList
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.impl.tuner_internal import _TUNER_PKL, TunerInternal

    assert "save_fn=self.save_to_dir" in inspect.getsource(TuneController.checkpoint)
    sync = inspect.getsource(_ExperimentCheckpointManager.sync_up_experiment_state)
    assert sync.index("save_fn()") < sync.index("syncer.sync_up(")
    save = inspect.getsource(getattr(TuneController.save_to_dir, "__wrapped__",
                                     TuneController.save_to_dir))
    assert "experiment_driver_staging_path" in save and "_callbacks.save_to_dir" in save
    assert "self._session_str" in inspect.getsource(TuneController.experiment_state_file_name.fget)
    assert isinstance(StorageContext.experiment_driver_staging_path, property)
    # restore reads only what sync_down brings back: the .json and .pkl files at the top
    down = inspect.getsource(_ExperimentCheckpointManager.sync_down_experiment_state)
    assert 'endswith(".json")' in down and 'endswith(".pkl")' in down
    assert _TUNER_PKL == "tuner.pkl"
    # a fresh Tuner writes tuner.pkl; a restored one returns before that, leaving it as signed
    init = inspect.getsource(TunerInternal.__init__)
    restore = init.index("self._restore_from_path_or_uri(")
    assert restore < init.index("return", restore) < init.index("_TUNER_PKL")
    callbacks = [Callback(), Callback()]
    assert list(CallbackList(callbacks)) == callbacks            # iterable, in order


def test_a_restored_tuner_exposes_its_run_and_tune_config():
    from ray.tune.impl.tuner_internal import TunerInternal
    from ray.tune.tuner import Tuner

    assert "self._local_tuner" in inspect.getsource(Tuner.__init__)
    init = inspect.getsource(TunerInternal.__init__)
    assert "self._run_config" in init and "self._tune_config" in init


def test_a_trial_names_the_checkpoint_it_continues_from():
    from ray.train._internal.checkpoint_manager import _CheckpointManager

    manager = _CheckpointManager(checkpoint_config=None)
    trial = SimpleNamespace(run_metadata=SimpleNamespace(checkpoint_manager=manager))
    assert latest_checkpoint_result(trial) is None
    assert isinstance(_CheckpointManager.latest_checkpoint_result, property)
    assert checkpoint_results(trial) == [] and \
        checkpoint_results(trial) is manager._checkpoint_results      # live: retention edits it


def test_pbt_state_of_any_scheduler_and_a_save_in_flight():
    from ray.train._internal.session import _FutureTrainingResult
    from ray.tune.schedulers import FIFOScheduler

    scheduler, _, trials = population()
    assert pbt_population(scheduler) is scheduler.population
    assert pbt_population(FIFOScheduler()) == {}
    assert "block" in inspect.signature(_FutureTrainingResult.resolve).parameters
