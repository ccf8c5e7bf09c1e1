"""The driver-side Tune callback that writes every reported result to the Parquet store.

Ray's own result.json can lose rows in PBT runs; `on_trial_result` sees every result. Rows are
buffered (lifelab.platform.store_writer) and written whenever Tune saves the experiment state a
resume starts from: Tune calls every callback's `get_state` while saving it, before the state
reaches storage, so no row older than a checkpoint a resume can continue from is ever lost to a
crash. A handful of part files per table at any time; one per table when the sweep ends.

The callback writes where the sweep is now: Tune pickles it with the experiment, and a sweep dir
may since have been moved or copied, so a resume hands it its location (a callback unpickled
without one refuses to write anywhere).
"""

from __future__ import annotations

import json
import time
from numbers import Real

from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS

from lifelab.errors import StorageError
from lifelab.platform.store import ResultStore
from lifelab.platform.store_writer import StoreWriter
from lifelab.trainables.trainable import trial_seed

# keys of a result that are not metrics: Tune's bookkeeping and lifelab's structured extras
NOT_METRICS = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint",
                                      "acc_rows", "lifelab_events", "lifelab_worker",
                                      "lifelab_stop"}


def to_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


class RecordingCallback(tune.Callback):
    def __init__(self, sweep_uri: str, sweep: str):
        self.sweep_uri = sweep_uri
        self.sweep = sweep
        self.store: ResultStore | None = None
        self.writer: StoreWriter | None = None
        self.workers: dict[str, dict] = {}
        self.stopped: dict[str, str] = {}      # trial -> why it stopped early

    def __getstate__(self) -> dict:
        # Tune pickles callbacks with the experiment; the location and the run come from the
        # driver that resumes it, never from the pickle
        return {**self.__dict__, "sweep_uri": None, "store": None, "writer": None,
                "workers": {}, "stopped": {}}

    def setup(self, **info) -> None:
        if self.sweep_uri is None:
            raise StorageError("this sweep's recording was restored from Tune's saved "
                               "experiment, which does not know where the sweep dir is now: "
                               "continue it with `lifelab resume SWEEP_DIR`")
        self.store = ResultStore(self.sweep_uri)
        self.writer = StoreWriter(self.store)

    def get_state(self) -> None:
        """Tune is saving the experiment state: make every row reported so far durable first.
        (Returns None: nothing of this callback goes into Tune's pickles.)"""
        if self.writer is not None:
            self.writer.flush()

    # -- results -------------------------------------------------------------------------------

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        it = int(result["training_iteration"])
        time_s = float(result.get("time_total_s", 0.0))
        metrics = [{"sweep": self.sweep, "trial_id": trial.trial_id, "iteration": it,
                    "time_s": time_s, "name": name, "value": float(value)}
                   for name, value in result.items()
                   if name not in NOT_METRICS and isinstance(value, Real)
                   and not isinstance(value, bool)]
        self.writer.add("metrics", metrics)
        accuracy = [{"sweep": self.sweep, "trial_id": trial.trial_id, "iteration": it,
                     "trained_task": task, "eval_task": j, "accuracy": float(acc),
                     "split": split}
                    for task, row, split in result.get("acc_rows", [])
                    for j, acc in enumerate(row)]
        self.writer.add("accuracy", accuracy)
        events = [{"sweep": self.sweep, "trial_id": trial.trial_id,
                   "iteration": int(event["iteration"]), "kind": event["kind"],
                   "donor": event["donor"], "old_config_json": to_json(event["old_config"]),
                   "new_config_json": to_json(event["new_config"]), "time": time.time()}
                  for event in result.get("lifelab_events", [])]
        self.writer.add("events", events)
        if "lifelab_worker" in result:
            self.workers[trial.trial_id] = result["lifelab_worker"]
        if "lifelab_stop" in result:
            self.stopped[trial.trial_id] = result["lifelab_stop"]

    # -- trials --------------------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._write_trial(trial, "RUNNING")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        reason = self.stopped.get(trial.trial_id)
        self._write_trial(trial, "DIVERGED" if reason else "TERMINATED", error=reason or "")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write_trial(trial, "ERROR", error=_error_text(trial))

    def on_experiment_end(self, trials, **info) -> None:
        self.writer.flush()
        self.store.compact_all()

    def _write_trial(self, trial, status: str, error: str = "") -> None:
        worker = self.workers.get(trial.trial_id, {})
        last = trial.last_result or {}
        self.writer.add("trials", [{
            "sweep": self.sweep, "trial_id": trial.trial_id,
            "learner": str(trial.config.get("learner")),
            "seed": trial_seed(trial.config, trial.trial_id),
            "config_json": to_json(trial.config), "status": status, "error": error,
            "iterations": int(last.get("training_iteration", 0)),
            "node": worker.get("node", last.get("hostname", "")),
            "ray_version": worker.get("ray", ""), "torch_version": worker.get("torch", ""),
            "written_at": time.time(),
        }])


def _error_text(trial) -> str:
    """The last line of the trial's error (the exception message), or where to find it."""
    path = getattr(trial, "error_file", None)
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else ""
    except (OSError, TypeError):
        return f"see {path}" if path else "unknown error"
