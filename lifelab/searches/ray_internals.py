"""Every private part of Ray Tune that lifelab relies on, in one place.

Ray's PopulationBasedTraining keeps its per-trial state and its extension points private
(`_trial_state`, `_quantiles`, `_exploit`, ...), and the TuneController's failure handling and
state saves are private too. lifelab's schedulers and guards use them only through this module,
and tests/test_ray_internals.py pins exactly the behaviour used here: a Ray upgrade that changes
any of it fails there first, naming what moved.
"""

from __future__ import annotations


class PBTHooks:
    """Mixin placed before Ray's PopulationBasedTraining (or PB2) in a scheduler's bases.

    Exposes the private state lifelab reads and writes under stable names, and routes Ray's
    private hooks to public ones a subclass overrides (calling `super()` reaches Ray's own).
    """

    # -- state ---------------------------------------------------------------------------------

    @property
    def population(self) -> dict:
        """trial -> Ray's per-trial PBT state (`last_score`, `last_train_time`,
        `last_perturbation_time`, `last_checkpoint`)."""
        return self._trial_state

    @population.setter
    def population(self, states: dict) -> None:
        self._trial_state = states

    @property
    def synch(self) -> bool:
        return self._synch

    @property
    def interval(self) -> int:
        return self._perturbation_interval

    @property
    def next_sync(self) -> int:
        """Synchronous PBT's next sync point: it runs only trials short of it."""
        return self._next_perturbation_sync

    @next_sync.setter
    def next_sync(self, value: int) -> None:
        self._next_perturbation_sync = value

    @property
    def mutations(self) -> dict:
        """The hyperparam_mutations PBT samples and explores."""
        return self._hyperparam_mutations

    @mutations.setter
    def mutations(self, value: dict) -> None:
        self._hyperparam_mutations = value

    # -- hooks: Ray calls the private name, lifelab overrides the public one -------------------

    def _quantiles(self):
        return self.quantiles()

    def quantiles(self):
        """(lower, upper) quantile of the trials with a score, worst first."""
        return super()._quantiles()

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
        return self.checkpoint_or_exploit(trial, tune_controller, upper_quantile,
                                          lower_quantile)

    def checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
        return super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile,
                                              lower_quantile)

    def _exploit(self, tune_controller, trial, trial_to_clone):
        return self.exploit(tune_controller, trial, trial_to_clone)

    def exploit(self, tune_controller, trial, trial_to_clone):
        """Send `trial` to `trial_to_clone`'s checkpoint under an explored copy of its config."""
        return super()._exploit(tune_controller, trial, trial_to_clone)

    def _get_new_config(self, trial, trial_to_clone):
        return self.new_config(trial, trial_to_clone)

    def new_config(self, trial, trial_to_clone):
        """-> (the explored config, {key: operation})."""
        return super()._get_new_config(trial, trial_to_clone)

    def _save_trial_state(self, state, time, result, trial):
        return self.save_trial_state(state, time, result, trial)

    def save_trial_state(self, state, time, result, trial):
        """Record a perturbation-time result as the trial's score (PB2: also its GP data)."""
        return super()._save_trial_state(state, time, result, trial)


def pb2_data(scheduler):
    """PB2's table of (Trial, Time, hyperparameters..., Reward) rows its GP learns from."""
    return scheduler.data


def set_pb2_data(scheduler, data) -> None:
    scheduler.data = data


def latest_checkpoint_result(trial):
    """The training result (with `.checkpoint` and `.metrics`) a trial continues from, or None."""
    return getattr(trial.run_metadata.checkpoint_manager, "latest_checkpoint_result", None)


def checkpoint_results(trial) -> list:
    """The training results with checkpoints Tune keeps (and saves) for a trial: a live list."""
    return trial.run_metadata.checkpoint_manager._checkpoint_results


def pbt_population(scheduler) -> dict:
    """trial -> PBT state of any scheduler: {} for one that is no PBT. A state's
    `last_checkpoint` is a checkpoint, None, or a save in flight (`resolve(block=False)`)."""
    return getattr(scheduler, "_trial_state", None) or {}


def retry_worker_loss() -> None:
    """A trial whose worker process dies is retried from its last checkpoint, up to
    FailureConfig.max_failures, also where Tune ended it in ERROR at once.

    Ray reports an actor's death twice: to the actor's error callback, and to that of the task
    that found it dead. For a RUNNING trial only the second counts. For a trial that is not
    running, e.g. a PENDING one being handed a cached actor (reuse_actors: PBT restarting a
    PAUSED trial), the first report requeues it and Tune took the second one for a failure of
    the requeued trial. The reset the trial waited for never comes either, and Tune would never
    start it again (nor, with PBT choosing it first, any other trial).
    """
    from ray.exceptions import RayActorError
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    original = TuneController._process_trial_failure
    if getattr(original, "lifelab", False):
        return

    def process_trial_failure(self, trial, exception):
        if isinstance(exception, RayActorError):
            self._resetting_trials.discard(trial)
        if isinstance(exception, RayActorError) and trial.status == Trial.PENDING:
            if trial not in self._trial_to_actor:
                return                   # the same death again: the trial is already requeued
            self._set_trial_status(trial, Trial.RUNNING)   # recover it like a running trial
        return original(self, trial, exception)

    process_trial_failure.lifelab = True
    process_trial_failure.__wrapped__ = original
    TuneController._process_trial_failure = process_trial_failure


def after_state_saves() -> None:
    """Right after Tune writes its experiment state to the driver's staging dir, and before it
    syncs that dir to storage, call `state_saved(staging_dir, session)` of every callback that
    has one (`session`: the string in the names of the files this driver writes)."""
    from ray.tune.execution.tune_controller import TuneController

    original = TuneController.save_to_dir
    if getattr(original, "lifelab", False):
        return

    def save_to_dir(self):
        original(self)
        for callback in self._callbacks:
            if hasattr(callback, "state_saved"):
                callback.state_saved(self._storage.experiment_driver_staging_path,
                                     self._session_str)

    save_to_dir.lifelab = True
    save_to_dir.__wrapped__ = original
    TuneController.save_to_dir = save_to_dir


def set_restored_run(tuner, callbacks: list, scheduler, verbose: int) -> None:
    """Replace what a restored Tuner unpickled: its callbacks, its scheduler, its verbosity."""
    internal = tuner._local_tuner
    internal._run_config.callbacks = callbacks
    internal._tune_config.scheduler = scheduler
    internal._run_config.verbose = verbose
