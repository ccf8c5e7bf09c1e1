"""Checkpoint retention that population-based training can live with.

Every trial checkpoints every round (a resume loses at most one round), so keeping them all would
fill the bucket: trials × rounds checkpoints. Tune's own `CheckpointConfig(num_to_keep)` cannot
be used with PBT: it deletes a donor's checkpoint that PBT then tries to exploit, and Tune's
resume can name a checkpoint already gone. Tune keeps everything here (num_to_keep=None) and this
callback deletes a trial's checkpoints once nothing can need them. Kept:

- every trial's latest checkpoint: what it continues from (after an exploit, the donor's);
- every checkpoint PBT holds for a future exploit (the last checkpoint of each top trial);
- every trial's latest checkpoint as of each of the last PINNED_SAVES experiment-state saves:
  a resume after a crash continues from the state on storage, which lags the newest save while
  it uploads.

Checkpoints are deleted when Tune saves the experiment state and at most every PRUNE_S seconds
between saves, and dropped from Tune's bookkeeping too, so the state Tune saves stays one
checkpoint per trial rather than one per round. Disk use grows with the number of trials, not
with trials × rounds. A resumed sweep first deletes the checkpoints the crashed run wrote after
its last saved state: no state refers to them.
"""

from __future__ import annotations

import re
import time
from collections import deque

import pyarrow.fs as pafs
from ray import tune

from lifelab.searches.ray_internals import checkpoint_results, pbt_population

PINNED_SAVES = 3
PRUNE_S = 5.0
CHECKPOINT_DIR = re.compile(r"checkpoint_\d+$")


def _path(checkpoint) -> str | None:
    return checkpoint.path.rstrip("/") if checkpoint is not None else None


def _tail(path: str) -> str:
    """<trial dir>/<checkpoint dir>: the same wherever the sweep dir is now."""
    return "/".join(path.split("/")[-2:])


class CheckpointRetention(tune.Callback):
    def __init__(self, scheduler=None, resumed: bool = False):
        self.scheduler = scheduler
        self.resumed = resumed
        self.trials: list = []
        self.saved: deque[set[str]] = deque(maxlen=PINNED_SAVES)
        self.dirty: set = set()            # trials that registered a checkpoint since a prune
        self.last_prune = time.monotonic()
        self.sizes: dict[str, int] = {}     # live checkpoint dir -> bytes

    def __getstate__(self) -> dict:
        # pickled with Tune's experiment: a resume builds its own
        state = dict(self.__dict__)
        state.update(scheduler=None, trials=[], saved=deque(maxlen=PINNED_SAVES), dirty=set(),
                     sizes={})
        return state

    # -- Tune's hooks ----------------------------------------------------------------------------

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.trials = trials

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        self.trials = trials
        self.dirty.add(trial)
        path = _path(checkpoint)
        if path is not None and path not in self.sizes:
            self.sizes[path] = _size(checkpoint.filesystem, path)

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.resumed:            # after the resume's checks fixed the paths of moved sweeps
            self.resumed = False
            self.delete_orphans(trials)
        if self.dirty and time.monotonic() - self.last_prune >= PRUNE_S:
            self.prune(trials)

    def get_state(self) -> None:
        """Tune is saving the experiment state: remember what it refers to, then prune."""
        self.saved.append(self._latest(self.trials))
        self.dirty.update(self.trials)
        self.prune(self.trials)

    def on_experiment_end(self, trials, **info) -> None:
        self.dirty.update(trials)
        self.prune(trials)

    # -- retention -------------------------------------------------------------------------------

    def pinned(self, trials) -> set[str]:
        """Every checkpoint path that a trial, PBT or a resume may still need."""
        return (set().union(*self.saved) | self._latest(trials)
                | pbt_held_checkpoints(self.scheduler))

    def prune(self, trials) -> None:
        self.last_prune = time.monotonic()
        if not self.dirty:
            return
        keep = self.pinned(trials)
        for trial in list(self.dirty):
            results = checkpoint_results(trial)
            stale = [r for r in results if _path(r.checkpoint) not in keep]
            if not stale:
                continue
            results[:] = [r for r in results if _path(r.checkpoint) in keep]
            for result in stale:
                self._delete(result.checkpoint.filesystem, _path(result.checkpoint))
        self.dirty.clear()

    def delete_orphans(self, trials) -> None:
        """Delete the checkpoint dirs of these trials that no restored state refers to (paths
        compared from the trial dir on: the state may name where a moved sweep used to be)."""
        known = {_tail(path) for path in self.pinned(trials)} | {
            _tail(_path(r.checkpoint)) for t in trials for r in checkpoint_results(t)}
        for trial in trials:
            fs, trial_dir = trial.storage.storage_filesystem, trial.storage.trial_fs_path
            try:
                infos = fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
            except OSError:
                continue
            for info in infos:
                if (info.type == pafs.FileType.Directory and CHECKPOINT_DIR.match(info.base_name)
                        and _tail(info.path.rstrip("/")) not in known):
                    self._delete(fs, info.path.rstrip("/"))

    def _delete(self, fs, path: str) -> None:
        try:
            fs.delete_dir(path)
        except FileNotFoundError:
            pass                       # deleted before a crash; the restored state still named it
        self.sizes.pop(path, None)

    def _latest(self, trials) -> set[str]:
        return {path for t in trials if (path := _path(t.checkpoint)) is not None}

    def summary(self) -> str:
        """Checkpoints kept on storage, for the progress output."""
        return f"{len(self.sizes)} checkpoints on storage ({_mb(sum(self.sizes.values()))})"


def _size(fs, path: str) -> int:
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError:
        return 0
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def pbt_held_checkpoints(scheduler) -> set[str]:
    """The checkpoints a PBT scheduler holds for future exploits (its trials' last_checkpoint:
    a checkpoint, or a save in flight, which counts once it has finished)."""
    paths = set()
    for state in pbt_population(scheduler).values():
        held = state.last_checkpoint
        if held is not None and hasattr(held, "resolve"):        # a save in flight
            result = held.resolve(block=False)
            held = result.checkpoint if result is not None else None
        if (path := _path(held)) is not None:
            paths.add(path)
    return paths
