"""One generic Ray Tune trainable that drives any learner.

Trial config = the learner's own config + `learner` (its name in the spec) + `stream` + `seed`,
and in an evaluation sweep `lifelab_schedule`: [[iteration, {key: value}], ...], a PBT schedule
replayed in one trial (from that training iteration on, those values hold; the learner keeps its
state across each change, as Tune's PopulationBasedTrainingReplay does for a single trial).
One Tune iteration is one `step_round()`. Besides the learner's metrics, each result carries:
  round_s          wall seconds of the round
  acc_rows         accuracy-matrix rows finished this round, of the test and the validation
                   matrix: [[trained_task, [acc per task], "test" | "val"], ...]
  lifelab_events   population events seen by this trial (exploits, divergences): events table
  lifelab_worker   on the first result of a trial: node, ray and torch versions
  lifelab_stop     why the trial stopped early (a NaN or infinite train_loss); it ends with `done`

A trial whose train_loss becomes NaN or infinite has diverged (an event of kind "diverged"). Under
a scheduler that cannot rescue it (FIFO, ASHA, ...) it stops. Under PBT/PB2 (`lifelab_rescue` in
its config: the search metric, its mode, the rounds to wait) it keeps running without training
its broken weights, reporting the worst value of the metric, so that PBT sends it to a healthy
donor's checkpoint at its next perturbation; from there it trains again. Not rescued in time, it
stops.
"""

from __future__ import annotations

import math
import os
import socket
import time

import ray
import torch
from ray import tune

from lifelab.errors import ConfigError
from lifelab.learners.base import own_config
from lifelab.platform.data import Dataset
from lifelab.trainables.registry import learner_class

CHECKPOINT_FILE = "learner.pt"
MAX_PACE_S = 10.0          # the longest a diverged trial's round waits for its rescue


def trial_seed(config: dict, trial_id: str) -> int:
    """Each trial's seed: the sweep's seed plus the trial's index, so trials differ reproducibly;
    the seed it drew when the spec searches over seeds."""
    if config.get("lifelab_seed_searched"):
        return int(config["seed"])
    index = trial_id.rsplit("_", 1)[-1]
    return int(config.get("seed", 0)) + (int(index) if index.isdigit() else 0)


def learner_config(cls: type, config: dict, trial_id: str) -> dict:
    """The keys of the trial config that this learner has (a sweep over several learners
    samples every learner's keys), with the trial's own seed."""
    return {**own_config(cls, config), "seed": trial_seed(config, trial_id)}


class LearnerTrainable(tune.Trainable):
    """Drives `config['learner']`; `data` maps each dataset name the sweep's streams use to the
    dataset, shared via the object store;
    `learners` maps the spec's learner names to the classes the driver resolved (so a learner
    registered only in the driver's process reaches the workers too)."""

    def setup(self, config: dict, data: dict[str, Dataset] | None = None,
              learners: dict[str, type] | None = None) -> None:
        self._datasets = data or {}
        self._learners = learners or {}
        cpus = self.trial_resources.required_resources.get("CPU", 1) if self.trial_resources \
            else 1
        torch.set_num_threads(max(1, int(cpus)))
        self._build(config)

    def _build(self, config: dict) -> None:
        self._schedule = config.get("lifelab_schedule") or []
        self._make_learner(config)
        self._rows_sent = {"test": 0, "val": 0}
        self._events: list[dict] = []
        self._worker_sent = False
        self._rescue = config.get("lifelab_rescue")
        self._diverged: dict | None = None          # {"round", "reason"} while awaiting rescue

    def _make_learner(self, config: dict) -> None:
        cls = self._learners.get(config["learner"]) or learner_class(config["learner"])
        self.learner = cls(learner_config(cls, config, self.trial_id), device=self._device(),
                           data=self._datasets.get(config["stream"].get("dataset", "mnist5k")))
        self._learner_config = config

    def _config_at(self, iteration: int) -> dict:
        """The trial config in force during training iteration `iteration` (1-based)."""
        config = dict(self.config)
        for start, changes in self._schedule:
            if start <= iteration:
                config.update(changes)
        return config

    def _switch(self, config: dict) -> None:
        """Continue the learner's own state under `config` (a scheduled change)."""
        state, old = self.learner.state_dict(), self._learner_config
        self._make_learner(config)
        self._continue(state, old)

    def _continue(self, state: dict, old_config: dict) -> None:
        """Load a state saved under `old_config`: across architecture keys through `adapt`."""
        changed = [key for key in self.learner.architecture_keys
                   if old_config.get(key) != self._learner_config.get(key)]
        if changed:
            self.learner.adapt(state, old_config)
        else:
            self.learner.load_state_dict(state)

    def _device(self) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned to this trial
        return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"

    def step(self) -> dict:
        if self._diverged is not None:
            return self._finish(self._awaiting_rescue())
        if self._schedule:
            scheduled = self._config_at(self.iteration + 1)
            if scheduled != self._learner_config:
                self._switch(scheduled)
        start = time.perf_counter()
        metrics = self.learner.step_round()
        result: dict = {**metrics, "round_s": time.perf_counter() - start}
        loss = metrics.get("train_loss", 0.0)
        if not math.isfinite(loss):
            self._diverge(result, loss)
        new_rows = [[i, rows[i], split] for split, rows in self._matrices()
                    for i in range(self._rows_sent[split], len(rows))]
        if new_rows:
            result["acc_rows"] = new_rows
            self._rows_sent = {split: len(rows) for split, rows in self._matrices()}
        return self._finish(result)

    def _finish(self, result: dict) -> dict:
        if self._events:
            result["lifelab_events"], self._events = self._events, []
        if not self._worker_sent:
            node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:12]}"
            result["lifelab_worker"] = {"node": node, "ray": ray.__version__,
                                        "torch": torch.__version__, "pid": os.getpid()}
            self._worker_sent = True
        result["done"] = self.learner.done or "lifelab_stop" in result
        return result

    def _diverge(self, result: dict, loss: float) -> None:
        at = self.iteration + 1
        reason = f"train_loss became {loss} at round {at}: lower the learning rate"
        self._events.append({"kind": "diverged", "donor": "", "iteration": at,
                             "old_config": dict(self.config), "new_config": dict(self.config)})
        if self._rescue and not self.learner.done and not self._last_round(at):
            self._diverged = {"round": at, "reason": reason,
                              "pace": min(float(result["round_s"]), MAX_PACE_S)}
            result[self._rescue["metric"]] = self._worst()
        else:                  # it would not recover; the population goes on without it
            result["lifelab_stop"] = reason

    def _awaiting_rescue(self) -> dict:
        """A round of a diverged member: no training on its broken weights, the worst value of
        the metric (PBT's bottom quantile, whichever the mode), until PBT sends it to a donor."""
        # as long as a trained round: it keeps in step with its population instead of racing
        # through its patience before any donor reached a perturbation
        time.sleep(float(self._diverged.get("pace", 0.0)))
        result = {self._rescue["metric"]: self._worst(), "round_s": 0.0}
        patience, at = int(self._rescue["patience"]), self.iteration + 1
        if at - self._diverged["round"] >= patience or self._last_round(at):
            result["lifelab_stop"] = (f"{self._diverged['reason']} (no healthy member took it "
                                      f"over by round {at})")
        return result

    def _last_round(self, at: int) -> bool:
        """The sweep's last round (stop.rounds): Tune ends the trial after it."""
        last = self._rescue.get("last_round")
        return last is not None and at >= int(last)

    def _worst(self) -> float:
        return -math.inf if self._rescue["mode"] == "max" else math.inf

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        torch.save({"learner": self.learner.state_dict(), "config": self._learner_config,
                    "trial_id": self.trial_id, "iteration": self.iteration,
                    "diverged": self._diverged},
                   os.path.join(checkpoint_dir, CHECKPOINT_FILE))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        # weights_only: a checkpoint in shared storage is data, never code
        saved = torch.load(os.path.join(checkpoint_dir, CHECKPOINT_FILE), weights_only=True,
                           map_location=self._device())
        old_config = saved["config"]
        if old_config.get("learner") != self.config.get("learner"):
            raise ConfigError(f"checkpoint of learner '{old_config.get('learner')}' cannot be "
                              f"loaded into '{self.config.get('learner')}'")
        if self._schedule:             # continue under the config scheduled for that point
            self._make_learner(self._config_at(int(saved["iteration"])))
        self._continue(saved["learner"], old_config)
        self._rows_sent = {split: len(rows) for split, rows in self._matrices()}
        self._diverged = saved.get("diverged")      # a healthy donor's state: trains again
        if saved["trial_id"] != self.trial_id:
            self._events.append({"kind": "exploit", "donor": saved["trial_id"],
                                 "iteration": saved["iteration"], "old_config": old_config,
                                 "new_config": dict(self.config)})

    def _matrices(self) -> list[tuple[str, list]]:
        return [("test", self.learner.rows), ("val", getattr(self.learner, "val_rows", []))]

    def reset_config(self, new_config: dict) -> bool:
        """Reuse this actor for another trial (PBT with reuse_actors=True)."""
        self._build(new_config)
        return True
