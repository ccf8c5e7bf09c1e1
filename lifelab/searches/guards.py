"""What keeps a sweep from silently going wrong after a crash: checks before a resumed sweep starts
its trials, and a watchdog that turns a sweep that can no longer progress into a one-line error.
(The retry of a trial whose worker process died lives with Ray's other internals.)"""

from __future__ import annotations

import json
import time

import pyarrow.fs as pafs
from ray import tune

from lifelab.errors import LifelabError
from lifelab.platform.store import join
from lifelab.searches.ray_internals import latest_checkpoint_result, retry_worker_loss

__all__ = ["CannotResumeError", "ResumeCheck", "StallGuard", "retry_worker_loss",
           "saved_trial_ids"]

STUCK_S = 60.0              # every unfinished trial PAUSED, none starting, for this long
STATE_GLOB = "experiment_state-"


class CannotResumeError(LifelabError):
    """A sweep cannot continue from what it saved, or can no longer make progress."""


def saved_trial_ids(fs: pafs.FileSystem, tune_path: str) -> set[str] | None:
    """The trial ids of the newest experiment state Tune saved (None: it saved none)."""
    selector = pafs.FileSelector(tune_path, allow_not_found=True)
    states = sorted(i.path for i in fs.get_file_info(selector)
                    if i.base_name.startswith(STATE_GLOB) and i.base_name.endswith(".json"))
    if not states:
        return None
    with fs.open_input_stream(states[-1]) as f:
        state = json.loads(f.read().decode())
    return {json.loads(trial)["trial_id"] for trial, _ in state.get("trial_data", [])}


class ResumeCheck(tune.Callback):
    """On the first step of a resumed sweep, before any trial starts:

    - Tune restored the saved trials. When it cannot, it logs the error and quietly starts a new
      experiment in the same dir, beside the old trials' results; this stops it instead.
    - Every unfinished trial continues from a checkpoint in this sweep dir. Tune moves a trial's
      own checkpoints along with a moved or copied sweep, but not one it took from a PBT donor:
      that one still names the old location, which a resume must neither read nor need.
    - That checkpoint exists (PBT needs every donor checkpoint to still be there).
    """

    def __init__(self, sweep_uri: str, expected: set[str]):
        self.sweep_uri = sweep_uri
        self.expected = expected
        self.done = False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "done": True}      # pickled: only the resume that made it checks

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.done:
            return
        self.done = True
        if self.expected - {t.trial_id for t in trials}:
            raise CannotResumeError(
                f"Tune could not restore the saved experiment of {self.sweep_uri} (its error is "
                "logged above) and would have started a new one beside it: fix that error and "
                "resume again")
        for trial in trials:
            if not trial.is_finished():
                self._check_checkpoint(trial)

    def _check_checkpoint(self, trial) -> None:
        latest = latest_checkpoint_result(trial)
        if latest is None or latest.checkpoint is None:
            return                                    # starts from scratch
        storage = trial.storage
        here = storage.experiment_fs_path
        path = latest.checkpoint.path.rstrip("/")
        if not path.startswith(here + "/"):
            # <old location>/tune/<trial dir>/<checkpoint dir> -> the same under this sweep dir
            path = join(here, *path.split("/")[-2:])
            latest.checkpoint = tune.Checkpoint(path=path,
                                                filesystem=storage.storage_filesystem)
        if storage.storage_filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            raise CannotResumeError(
                f"trial {trial.trial_id} of {self.sweep_uri} continues from checkpoint {path}, "
                "which is missing: restore the sweep dir whole (PBT trials continue from each "
                "other's checkpoints, so none may be deleted) and resume again")


class StallGuard(tune.Callback):
    """Stops a sweep that can no longer progress, with one line saying why, instead of letting
    it wait or cycle forever:

    - deadlock: every unfinished trial is PAUSED and the scheduler has started none for
      `stuck_s` (e.g. synchronous PBT waiting for a sync point no trial may run to);
    - livelock: the last `repeats` results all repeated rounds their trials had already reached
      (e.g. PBT sending the same trials back to the same checkpoints round after round).
    """

    def __init__(self, spec, stuck_s: float = STUCK_S, repeats: int | None = None):
        self.name = spec.name
        self.synch = bool(getattr(spec.search, "synch", False))
        self.stuck_s = stuck_s
        self.repeats = repeats
        self.reached: dict[str, int] = {}
        self.streak = 0
        self.paused_since: float | None = None
        self.stuck: str | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "reached": {}, "streak": 0, "paused_since": None, "stuck": None}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        it = int(result.get("training_iteration", 0))
        if it > self.reached.get(trial.trial_id, 0):
            self.reached[trial.trial_id] = it
            self.streak = 0
            return
        self.streak += 1
        limit = self.repeats if self.repeats is not None else 20 * len(trials) + 50
        if self.streak >= limit:       # raised between steps: Tune would wrap it from here
            self.stuck = (
                f"sweep {self.name} makes no progress: its last {self.streak} results only "
                "repeated rounds their trials had reached (PBT keeps sending them back to the "
                "same checkpoints): raise search.perturbation_interval in its spec.yaml and "
                "resume")

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.stuck:
            raise CannotResumeError(self.stuck)
        unfinished = [t for t in trials if not t.is_finished()]
        if not unfinished or any(t.status != "PAUSED" for t in unfinished):
            self.paused_since = None
            return
        now = time.monotonic()
        self.paused_since = self.paused_since or now
        if now - self.paused_since >= self.stuck_s:
            fix = ("set search.synch: false in its spec.yaml and resume" if self.synch
                   else "resume it again")
            raise CannotResumeError(
                f"sweep {self.name} cannot go on: its {len(unfinished)} unfinished trials have "
                f"all been PAUSED for {now - self.paused_since:.0f} s and the scheduler starts "
                f"none of them: {fix}")
