"""Experiment trackers: each trial's metrics, searched hyperparameters and accuracy matrix in
TensorBoard, MLflow or Weights & Biases, as one run per trial across PBT segments and resumes.

Driver-side Tune callbacks of our own, not Tune's: TBXLoggerCallback writes one run per trial
directory of Tune's (and warns on every acc_rows); MLflowLoggerCallback logs the config as MLflow
params at every trial start, and MLflow refuses to change a param, which PBT does at each exploit;
WandbLoggerCallback keeps two actors per trial for as long as the trial lives, a whole PBT
population's worth. Here the config is logged once, as the trial started, and each searched or
mutated key that is a number is also a `config/<key>` scalar every round (PBT's schedule as a
curve). Trackers are conveniences: one that fails (a tracking server down) prints one line and
the sweep goes on without it; the results store stays the record.

Where: <sweep>/tensorboard/<trial_id>, <sweep>/mlruns (or $MLFLOW_TRACKING_URI), <sweep>/wandb
(offline unless W&B has an API key or WANDB_MODE says otherwise). A sweep on s3:// or gs://
keeps them in ./lifelab-trackers/<name> on the driver's machine.
"""

from __future__ import annotations

import json
import os
import sys
from numbers import Real

from ray import tune

from lifelab.platform.config import SweepSpec
from lifelab.searches.progress import searched_keys
from lifelab.searches.recording import NOT_METRICS

IMAGE_KEY = "accuracy_matrix"
FLUSH_S = 5                 # seconds before a TensorBoard event reaches its file


def tracker_root(sweep_uri: str, name: str) -> str:
    """A local folder for tracker files: the sweep dir itself when the sweep is local."""
    if "://" not in sweep_uri:
        return sweep_uri
    return os.path.abspath(os.path.join("lifelab-trackers", name))


def tracker_callbacks(spec: SweepSpec, sweep_uri: str, announce: bool) -> list[tune.Callback]:
    """The callbacks of the spec's `loggers`; `announce`: print how to look at each at start."""
    _no_callback_tagging()
    root = tracker_root(sweep_uri, spec.name)
    kinds = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}
    return [kinds[name](spec, root, announce) for name in spec.loggers]


def _no_callback_tagging() -> None:
    """Tune tags a run's callbacks for Ray's usage stats by importing each tracker integration
    of Ray's, which imports mlflow and wandb whenever they are installed: seconds at the start of
    every sweep, whatever its loggers, and temp dirs of wandb's that a killed driver leaves."""
    from ray.air._internal import usage

    usage.tag_callbacks = lambda callbacks: False


def scalars(result: dict, config: dict, keys: list[str]) -> dict[str, float]:
    """A result's metrics (what the results store keeps as metrics), and the current value of
    each searched key that is a number, as `config/<key>`."""
    out = {name: float(value) for name, value in result.items()
           if name not in NOT_METRICS and _number(value)}
    out.update({f"config/{key}": float(config[key]) for key in keys if _number(config.get(key))})
    return out


def accuracy_image(rows: dict[int, list[float]], cell: int = 24):
    """The accuracy matrix so far (row i: after training task i; column j: task j) as an RGB
    array (height, width, 3) of uint8: one `cell`-pixel square per entry, viridis over 0..1,
    black where not evaluated. Drawn with numpy alone: the driver renders one per finished task
    of every trial, and a matplotlib figure each would cost a 1,000-trial sweep minutes."""
    import numpy as np
    from matplotlib import colormaps

    size = max(max(rows) + 1, max(len(r) for r in rows.values()))
    matrix = np.full((size, size), np.nan)
    for i, row in rows.items():
        matrix[i, :len(row)] = row
    colors = colormaps["viridis"](np.clip(np.nan_to_num(matrix), 0, 1))[..., :3]
    colors[np.isnan(matrix)] = 0
    pixels = np.kron(colors, np.ones((cell, cell, 1)))
    return (pixels * 255).round().astype(np.uint8)


class Tracker(tune.Callback):
    """One tracker: a run per trial, opened at its first start and kept across PBT pauses."""

    name = ""

    def __init__(self, spec: SweepSpec, root: str, announce: bool):
        self.sweep = spec.name
        self.root = root
        self.keys = searched_keys(spec)
        self.announce = announce
        self.runs: dict = {}                       # trial_id -> the backend's run
        self.rows: dict[str, dict[int, list]] = {}  # trial_id -> test matrix rows so far
        self.broken = False

    def __getstate__(self) -> dict:
        # pickled with the experiment; a resumed sweep opens (or reopens) its runs again
        return {**self.__dict__, "runs": {}, "rows": {}, "broken": False}

    # -- Tune's hooks: a tracker error never reaches Tune -------------------------------------

    def setup(self, **info) -> None:
        self._guard(self.open)
        if self.announce and not self.broken:
            print(self.where(), flush=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._guard(self._run, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._guard(self._result, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._guard(self._end, trial.trial_id, False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._guard(self._end, trial.trial_id, True)

    def on_experiment_end(self, trials, **info) -> None:
        for trial_id in list(self.runs):
            self._guard(self._end, trial_id, False)

    def _guard(self, action, *args) -> None:
        if self.broken:
            return
        try:
            action(*args)
        except Exception as exc:   # (any failure of a tracking library)
            self.broken = True
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            print(f"lifelab: {self.name} logging stopped ({reason}); the sweep goes on, its "
                  "results store is complete", file=sys.stderr, flush=True)

    def _run(self, trial):
        if trial.trial_id not in self.runs:
            self.runs[trial.trial_id] = self.start(trial.trial_id, dict(trial.config))
        return self.runs[trial.trial_id]

    def _result(self, trial, result: dict) -> None:
        run = self._run(trial)
        step = int(result.get("training_iteration", 0))
        self.log(run, step, scalars(result, trial.config, self.keys))
        rows = self.rows.setdefault(trial.trial_id, {})
        new = [(task, row) for task, row, split in result.get("acc_rows", []) if split == "test"]
        if new:
            rows.update(new)
            self.image(run, step, accuracy_image(rows))

    def _end(self, trial_id: str, failed: bool) -> None:
        run = self.runs.pop(trial_id, None)
        if run is not None:
            self.finish(run, failed)

    # -- one backend ---------------------------------------------------------------------------

    def open(self) -> None:
        """Import the library, open the store."""

    def where(self) -> str:
        """One line: how to look at the runs."""
        raise NotImplementedError

    def start(self, trial_id: str, config: dict):
        raise NotImplementedError

    def log(self, run, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def image(self, run, step: int, image) -> None:
        raise NotImplementedError

    def finish(self, run, failed: bool) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def open(self) -> None:
        import tensorboardX  # noqa: F401 (fail here, once, if it is missing)

    def where(self) -> str:
        return f"tensorboard --logdir {os.path.join(self.root, 'tensorboard')}"

    def start(self, trial_id: str, config: dict):
        from tensorboardX import SummaryWriter

        # a resumed trial adds an event file to the same folder: still one run; events reach
        # the file within FLUSH_S (a flush per result would cost a big sweep's driver dearly)
        writer = SummaryWriter(logdir=os.path.join(self.root, "tensorboard", trial_id),
                               flush_secs=FLUSH_S)
        writer.add_text("config", "    " + json.dumps(config, sort_keys=True, default=str))
        return writer

    def log(self, run, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            run.add_scalar(name, value, step)

    def image(self, run, step: int, image) -> None:
        run.add_image(IMAGE_KEY, image, step, dataformats="HWC")

    def finish(self, run, failed: bool) -> None:
        run.close()


class MLflowTracker(Tracker):
    name = "mlflow"

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "client": None}

    def open(self) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or \
            "file://" + os.path.join(self.root, "mlruns")
        if self.uri.startswith("file:"):
            # MLflow 3 keeps its file store only on request; a folder next to the results is
            # what a sweep wants (`mlflow ui` reads it with the same variable set)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.sweep)
        self.experiment = found.experiment_id if found else \
            self.client.create_experiment(self.sweep)

    def where(self) -> str:
        if self.uri.startswith("file:"):
            return (f"MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri "
                    f"{self.uri}")
        return f"mlflow: experiment {self.sweep} at {self.uri}"

    def start(self, trial_id: str, config: dict):
        from mlflow.entities import Param

        runs = self.client.search_runs([self.experiment],
                                       f"tags.`lifelab.trial_id` = '{trial_id}'", max_results=1)
        if runs:                      # a resumed sweep continues the trial's run
            self.client.update_run(runs[0].info.run_id, status="RUNNING")
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment, run_name=trial_id,
                                     tags={"lifelab.sweep": self.sweep,
                                           "lifelab.trial_id": trial_id})
        params = [Param(key, value[:500]) for key, value in _flat(config).items()]
        self.client.log_batch(run.info.run_id, params=params)
        return run.info.run_id

    def log(self, run, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run, metrics=[Metric(name, value, now, step)
                                            for name, value in values.items()])

    def image(self, run, step: int, image) -> None:
        self.client.log_image(run, image, key=IMAGE_KEY, step=step)

    def finish(self, run, failed: bool) -> None:
        self.client.set_terminated(run, "FAILED" if failed else "FINISHED")


class WandbTracker(Tracker):
    name = "wandb"

    def open(self) -> None:
        import wandb

        self.mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_key(wandb) else
                                                     "offline")
        self.project = os.environ.get("WANDB_PROJECT") or "lifelab"

    def where(self) -> str:
        folder = os.path.join(self.root, "wandb")
        if self.mode == "offline":
            return f"wandb sync {folder}/offline-run-*    (W&B runs are offline, in {folder})"
        return f"wandb: project {self.project}, group {self.sweep} (files in {folder})"

    def start(self, trial_id: str, config: dict):
        import wandb

        os.makedirs(self.root, exist_ok=True)
        run = wandb.init(project=self.project, group=self.sweep, name=trial_id, id=trial_id,
                         dir=self.root, mode=self.mode, resume="allow", reinit="create_new",
                         config=json.loads(json.dumps(config, default=str)),
                         settings=wandb.Settings(silent=True, console="off",
                                                 x_disable_stats=True))
        # PBT moves a trial back to a donor's round: plot against the round, not W&B's step
        run.define_metric("training_iteration")
        run.define_metric("*", step_metric="training_iteration")
        return run

    def log(self, run, step: int, values: dict[str, float]) -> None:
        run.log({**values, "training_iteration": step})

    def image(self, run, step: int, image) -> None:
        import wandb

        run.log({IMAGE_KEY: wandb.Image(image), "training_iteration": step})

    def finish(self, run, failed: bool) -> None:
        run.finish(exit_code=1 if failed else 0)


def _wandb_key(wandb) -> bool:
    try:
        return bool(os.environ.get("WANDB_API_KEY") or wandb.api.api_key)
    except Exception:  # (no key, or no readable settings: offline)
        return False


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    """A config as MLflow params: nested mappings as dotted keys, everything else as text."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else \
                json.dumps(value, default=str)
    return out


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)
