"""The shared continual-learning loop, on the Learner contract (`lifelab.learners.contract`).

`ContinualLearner` implements the loop every continual learner shares: train the current task for
`stream.steps_per_task` optimizer steps (or `stream.epochs_per_task` epochs' worth), evaluate on
every task seen so far, append that row to the accuracy matrix, move on. A round is
`steps_per_round` steps (0: one whole task), cut at task boundaries so every matrix row is
reported in the round that finished its task. The network is the `backbone` key's
(`lifelab.learners.backbones`: the MLP, a small CNN or a reduced ResNet-18).

Subclasses change one thing each: the batches of a step (`training_batches`), an extra loss term
(`penalty`), what happens around the optimizer step (`before_step`, `after_step`) and when a task
ends (`on_task_end`), and their own state (`extra_state` / `load_extra_state`).

Metrics of every continual learner (fractions in [0, 1]):
  acc_avg      mean accuracy over the tasks seen so far, evaluated at the end of the round
  acc_avg_til  the same, task-incremental: each task scored on its own head's units given its
               identity (scenarios task and class; equals acc_avg in scenario task)
  acc_avg_cil  the same, class-incremental: the argmax over every unit of the tasks seen so far,
               no task identity (scenarios task and class; equals acc_avg in scenario class)
  bwt          backward transfer of the accuracy matrix (from 2 finished tasks on)
  forgetting   average forgetting of the accuracy matrix (from 2 finished tasks on)
  tasks_seen   tasks finished
  train_loss   mean training loss of the round's steps
Each accuracy metric has a validation twin `val_<name>` (e.g. `val_acc_avg`), scored on the
stream's validation split, which no learner trains on: searches select on those; the test
metrics are reported beside them (absent when `stream.validation` is 0).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners.backbones import BACKBONES, Precision, build_backbone
from lifelab.learners.contract import (  # noqa: F401  (re-exported: learners import them here)
    COMMON_KEYS,
    Evaluation,
    Learner,
    Param,
    checked_old_config,
    checked_params,
    checked_seed,
    override_hyperparameters,
    own_config,
)
from lifelab.platform.data import Dataset, load_stream_dataset
from lifelab.platform.metrics import summarize
from lifelab.platform.streams import Stream, StreamConfig, build_stream


class ContinualLearner(Learner):
    """The shared continual-learning loop over a backbone with one output unit per stream class."""

    name = "continual"
    params: dict[str, Param] = {
        "hidden": Param([100, 100], list, doc="hidden layer sizes of the MLP"),
        "backbone": Param("mlp", str, choices=BACKBONES,
                          doc="network: mlp (sized by hidden), cnn or resnet18 (sized by nf)"),
        "nf": Param(20, int, positive=True, high=512,
                    doc="channels of the first conv layer of cnn / resnet18 (GEM: 20)"),
        "amp": Param(True, bool, doc="on CUDA: bf16 (else fp16) mixed precision; off on CPU"),
        "channels_last": Param(True, bool, doc="on CUDA: channels-last conv nets; off on CPU"),
        "compile": Param(False, bool, doc="torch.compile the model"),
        "lr": Param(1e-3, float, positive=True, doc="learning rate"),
        "optimizer": Param("adam", str, choices=("adam", "sgd"), doc="optimizer"),
        "momentum": Param(0.0, float, low=0.0, doc="SGD momentum"),
        "batch_size": Param(64, int, positive=True, doc="samples per optimizer step"),
        "steps_per_round": Param(0, int, low=0, doc="optimizer steps per round (0: one task)"),
    }
    #: the metrics `step_round` reports (a search may optimise any of them)
    metrics: tuple[str, ...] = ("acc_avg", "acc_avg_til", "acc_avg_cil", "bwt", "forgetting",
                                "tasks_seen", "train_loss", "val_acc_avg", "val_acc_avg_til",
                                "val_acc_avg_cil", "val_bwt", "val_forgetting")
    #: defined from the second finished task on: not in every round, so no search selects on them
    partial_metrics = ("bwt", "forgetting", "val_bwt", "val_forgetting")
    #: keys whose change alters parameter shapes (an `adapt` is needed to load across them)
    architecture_keys: tuple[str, ...] = ("hidden", "backbone", "nf")

    def __init__(self, config: dict, device: str | torch.device = "cpu",
                 data: Dataset | None = None):
        super().__init__(config, device, data)
        stream_config: StreamConfig = self.config["stream"]
        data = data if data is not None else load_stream_dataset(stream_config)
        self.stream: Stream = build_stream(stream_config, data).to(self.device)
        self.steps_per_task = self.stream.steps_per_task(self.config["batch_size"])
        with torch.random.fork_rng(devices=[]):   # model init from the seed, global RNG untouched
            torch.manual_seed(self.config["seed"])
            self.model = self.build_model().to(self.device)
        self.generator = torch.Generator().manual_seed(self.config["seed"])
        self.optimizer = self.build_optimizer()
        self.precision = Precision(self.device, self.config.get("amp", False))
        self.task = 0                      # the task being trained
        self.step_in_task = 0
        self.view_rows: dict[str, list[list[float]]] = {}  # the same under "til" / "cil"
        self.val_rows: list[list[float]] = []               # both again on the validation split
        self.val_view_rows: dict[str, list[list[float]]] = {}
        self.splits = ("test", "val") if self.stream.tasks[0].num_val else ("test",)

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        full = super().validate_config(config)
        if full.get("backbone", "mlp") != "mlp" and cls.build_model is not \
                ContinualLearner.build_model:
            raise ConfigError(f"learner '{cls.name}' builds its own model, so backbone "
                              f"{full['backbone']} would do nothing: remove the backbone key")
        return full

    # -- building blocks subclasses may override -----------------------------------------------

    def build_model(self) -> nn.Module:
        config = self.config
        model = build_backbone(config.get("backbone", "mlp"), self.stream.input_shape,
                               self.stream.num_outputs, config["hidden"], config.get("nf", 20),
                               channels_last=config.get("channels_last", False)
                               and self.device.type == "cuda")
        if config.get("compile", False):
            model.compile()          # in place: parameter names (and checkpoints) unchanged
        return model

    def build_optimizer(self) -> torch.optim.Optimizer:
        if self.config["optimizer"] == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=self.config["lr"],
                                   momentum=self.config["momentum"])
        return torch.optim.Adam(self.model.parameters(), lr=self.config["lr"])

    def training_batches(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(task, x, y) chunks of one optimizer step; by default a batch of the current task."""
        return [(self.task, *self.sample(self.task, self.config["batch_size"]))]

    def penalty(self) -> torch.Tensor | float:
        """An extra loss term (regularizers); none by default."""
        return 0.0

    def before_step(self) -> None:
        """Called after backward, before the optimizer step: gradients are in `.grad`."""

    def after_step(self) -> None:
        """Called after the optimizer step (path-integral importances, SI / RWalk)."""

    def on_task_end(self, task: int) -> None:
        """Called after task `task` is trained and evaluated."""

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what `extra_state` returned."""

    # -- the loop ------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.task >= len(self.stream.tasks)

    def sample(self, task: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(self.stream.tasks[task].num_train, (n,), generator=self.generator)
        # augmentation (if the stream has one) draws from the same seeded generator
        return self.stream.tasks[task].train_batch(idx.to(self.device), self.generator)

    def logits(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """Logits of the output units `task` uses, given the tasks seen so far."""
        return self.model(x)[:, self.stream.output_units(task, self.task + 1)]

    def summed_loss(self, x: torch.Tensor, y: torch.Tensor, task: int) -> torch.Tensor:
        """The training loss of one task's batch, summed over its samples."""
        return F.cross_entropy(self.logits(x, task), y, reduction="sum")

    def train_step(self) -> torch.Tensor:
        self.model.train()
        chunks = self.training_batches()
        self.batch_total = sum(len(y) for _, _, y in chunks)
        with self.precision.autocast():          # CUDA mixed precision; nothing on CPU
            losses = [self.summed_loss(x, y, t) for t, x, y in chunks]
            loss = (losses[0] if len(losses) == 1 else sum(losses)) / self.batch_total
        penalty = self.penalty()
        if not isinstance(penalty, float) or penalty != 0.0:   # no-op adds cost a small net 10%
            loss = loss + penalty
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss, self.optimizer)
        self.before_step()
        self.precision.step(self.optimizer)
        self.after_step()
        return loss.detach()

    def step_round(self) -> dict[str, float]:
        if self.done:
            raise RuntimeError("the learner has finished its stream; check `done` first")
        budget = self.config["steps_per_round"] or self.steps_per_task
        losses = []
        while budget > 0 and not self.done:
            steps = min(budget, self.steps_per_task - self.step_in_task)
            losses += [self.train_step() for _ in range(steps)]
            budget -= steps
            self.step_in_task += steps
            if self.step_in_task == self.steps_per_task:
                self._finish_task()
        return self.round_metrics(torch.stack(losses).mean().item())

    def round_metrics(self, train_loss: float) -> dict[str, float]:
        metrics = {"tasks_seen": float(len(self.rows)), "train_loss": train_loss}
        for split in self.splits:
            rows, view_rows = self.matrices(split)
            if self.step_in_task == 0 and rows:                # ended on a task boundary
                current = rows[-1]
                views = {name: matrix[-1] for name, matrix in view_rows.items()}
            else:
                evaluation = self.evaluate(split=split)
                current, views = evaluation.accuracies, evaluation.views
            prefix = "val_" if split == "val" else ""
            metrics[f"{prefix}acc_avg"] = sum(current) / len(current)
            for name, accuracies in views.items():
                metrics[f"{prefix}acc_avg_{name}"] = sum(accuracies) / len(accuracies)
            if len(rows) >= 2:
                summary = summarize(rows)
                metrics[f"{prefix}bwt"] = summary["bwt"]
                metrics[f"{prefix}forgetting"] = summary["forgetting"]
        return metrics

    def matrices(self, split: str) -> tuple[list[list[float]], dict[str, list[list[float]]]]:
        """The accuracy matrix of a split ("test" or "val") and its views."""
        return (self.val_rows, self.val_view_rows) if split == "val" else \
            (self.rows, self.view_rows)

    def _finish_task(self) -> None:
        finished = self.task
        for split in self.splits:
            evaluation = self.evaluate(seen=finished + 1, split=split)
            rows, view_rows = self.matrices(split)
            rows.append(evaluation.accuracies)
            for name, accuracies in evaluation.views.items():
                view_rows.setdefault(name, []).append(accuracies)
        self.on_task_end(finished)
        self.task += 1
        self.step_in_task = 0

    @torch.no_grad()
    def evaluate(self, seen: int | None = None, split: str = "test") -> Evaluation:
        """Accuracy on each of the first `seen` tasks (default: every task trained or begun),
        on their `split` ("test" or "val") samples."""
        seen = seen if seen is not None else min(self.task + 1, len(self.stream.tasks))
        self.model.eval()
        accuracies, views = [], {}
        for j in range(seen):
            x, y = self.stream.tasks[j].eval_set(split)
            out = self.model(x)
            accuracies.append(_accuracy(out[:, self.stream.output_units(j, seen)], y))
            for name, (units, shift) in self.view_units(j, seen).items():
                views.setdefault(name, []).append(_accuracy(out[:, units], y + shift))
        return Evaluation(accuracies, tasks_trained=len(self.rows), views=views)

    def view_units(self, task: int, seen: int) -> dict[str, tuple[slice, int]]:
        """Task-incremental ("til") and class-incremental ("cil") scoring of `task` once `seen`
        tasks are trained: the output units and the shift from this scenario's labels to the
        view's. Scenarios task and class lay out c units per task, so both views exist there;
        scenario domain shares one head, so neither does."""
        scenario = self.stream.config.scenario
        if scenario == "domain":
            return {}
        c = self.stream.output_units(0, 1).stop        # units per task
        head, every = slice(c * task, c * task + c), slice(0, c * seen)
        if scenario == "task":                         # labels are local to the task's head
            return {"til": (head, 0), "cil": (every, c * task)}
        return {"til": (head, -c * task), "cil": (every, 0)}

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """A snapshot (deep copy): torch's state dicts alias live tensors, and an optimizer that
        loads aliased moments would share them with the original."""
        return copy.deepcopy({
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "precision": self.precision.state_dict(),
            "task": self.task,
            "step_in_task": self.step_in_task,
            "rows": [list(row) for row in self.rows],
            "view_rows": {name: [list(row) for row in rows]
                          for name, rows in self.view_rows.items()},
            "val_rows": [list(row) for row in self.val_rows],
            "val_view_rows": {name: [list(row) for row in rows]
                              for name, rows in self.val_view_rows.items()},
            "extra": self.extra_state(),
        })

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        override_hyperparameters(self.optimizer, lr=self.config["lr"],
                                 momentum=self.config["momentum"])
        self.generator.set_state(state["generator"])
        self.precision.load_state_dict(state.get("precision", {}))
        self.task = state["task"]
        self.step_in_task = state["step_in_task"]
        self.rows = [list(row) for row in state["rows"]]
        self.view_rows = {name: [list(row) for row in rows]
                          for name, rows in state.get("view_rows", {}).items()}
        self.val_rows = [list(row) for row in state.get("val_rows", [])]
        self.val_view_rows = {name: [list(row) for row in rows]
                              for name, rows in state.get("val_view_rows", {}).items()}
        self.load_extra_state(state["extra"])


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()
