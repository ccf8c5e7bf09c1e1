"""Distillation learners: the previous model's outputs as targets for the new one.

- `lwf` (Li & Hoiem 2017), no memory: each step adds, on the current batch,
      lwf_alpha * sum_g -mean_i sum_u softmax(o_g / T)_iu log softmax(z_g / T)_iu
  z the model's logits and o those of the frozen model that finished the previous task, T =
  lwf_temperature, g over the old output groups: the heads of past tasks in scenario task, the
  units of past classes in scenario class, the shared head in scenario domain. As in the paper
  there is no T^2 factor: lwf_alpha carries the scale.
- `icarl` (Rebuffi et al. 2017), class-incremental: a batch is drawn from the current task's
  training set together with the exemplars; the loss is the binary cross-entropy of every unit
  seen so far (mean over units), whose targets are the one-hot label on the current task's units
  and the frozen previous model's sigmoid outputs on the older ones. When a task ends, each
  class's exemplars are cut to m = buffer_size // classes seen (its first m in herding order) and
  each new class gets m exemplars chosen by herding on the L2-normalised features (the last
  hidden layer's activations) of its whole training set. Classification is by the nearest mean of
  exemplars in that feature space: a unit's score is minus the distance to its class's normalised
  mean (the task being trained, which has no exemplars yet, uses its training set's mean). Units
  are classes throughout (a task's units in scenario task), so the task-incremental view scores a
  task's classes only. Scenario domain has no new classes, so iCaRL refuses it.

Config keys: those of `lifelab.learners.base`, plus
  lwf_alpha        1.0   lwf: weight of the distillation term
  lwf_temperature  2.0   lwf: distillation temperature T
  buffer_size      200   icarl: exemplars kept (see `lifelab.learners.rehearsal`)

Metrics: those of `lifelab.learners.base`; icarl also reports buffer_bytes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners.base import ContinualLearner, Evaluation, Param
from lifelab.learners.buffer import Fields, HerdingBuffer, herding
from lifelab.learners.rehearsal import Chunks, Rehearsal


def frozen(model: nn.Module) -> nn.Module:
    old = copy.deepcopy(model).eval()
    old.requires_grad_(False)
    return old


def distillation(logits: torch.Tensor, old_logits: torch.Tensor, temperature: float
                 ) -> torch.Tensor:
    """Li & Hoiem's knowledge-distillation loss: the cross-entropy of the softened new
    distribution against the softened old one, averaged over samples."""
    target = torch.softmax(old_logits / temperature, dim=1)
    return -(target * torch.log_softmax(logits / temperature, dim=1)).sum(1).mean()


class PreviousModel:
    """Mixin: a frozen copy of the model as it was when the last task ended, saved and loaded
    with the learner's state."""

    old: nn.Module | None = None

    def freeze_previous(self) -> None:
        self.old = frozen(self.model)

    def extra_state(self) -> dict:
        return {**super().extra_state(),
                "old": None if self.old is None else self.old.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.old = None
        if state["old"] is not None:
            self.old = frozen(self.model)
            self.old.load_state_dict(state["old"])


class LwF(PreviousModel, ContinualLearner):
    """Learning without forgetting: distil the previous model on the current task's inputs."""

    name = "lwf"
    params = {**ContinualLearner.params,
              "lwf_alpha": Param(1.0, float, low=0.0, doc="weight of the distillation term"),
              "lwf_temperature": Param(2.0, float, positive=True,
                                       doc="distillation temperature T")}

    def summed_loss(self, x: torch.Tensor, y: torch.Tensor, task: int) -> torch.Tensor:
        # the base's loss, keeping the forward pass for the distillation term
        self.current = (x, self.model(x))
        units = self.stream.output_units(task, self.task + 1)
        return F.cross_entropy(self.current[1][:, units], y, reduction="sum")

    def old_groups(self) -> list[slice]:
        """The output units the previous model is distilled on, one softmax per group."""
        groups = {}
        for j in range(self.task):
            units = self.stream.output_units(j, self.task)
            groups[(units.start, units.stop)] = units
        return list(groups.values())

    def penalty(self) -> torch.Tensor | float:
        if self.old is None or self.config["lwf_alpha"] == 0:
            return 0.0
        x, out = self.current
        with torch.no_grad():
            old = self.old(x)
        temperature = self.config["lwf_temperature"]
        return self.config["lwf_alpha"] * sum(distillation(out[:, g], old[:, g], temperature)
                                              for g in self.old_groups())

    def on_task_end(self, task: int) -> None:
        self.freeze_previous()


class NearestMean(nn.Module):
    """Scores every unit by minus the distance of the normalised features to its class mean
    (-inf for a class without one)."""

    def __init__(self, features: nn.Module, means: torch.Tensor, known: torch.Tensor):
        super().__init__()
        self.features, self.means, self.known = features, means, known

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = -torch.cdist(F.normalize(self.features(x), dim=1), self.means)
        return scores.masked_fill(~self.known, float("-inf"))


class ICaRL(PreviousModel, Rehearsal):
    """iCaRL: herding exemplars, distillation, nearest-mean-of-exemplars classification."""

    name = "icarl"
    buffer_class = HerdingBuffer

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        full = super().validate_config(config)
        if full["stream"].scenario == "domain":
            raise ConfigError("icarl learns new classes, which stream.scenario domain does not "
                              "have: use scenario class or task")
        return full

    def buffer_fields(self) -> Fields:
        return {**super().buffer_fields(), "cls": ((), torch.long), "rank": ((), torch.long)}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model[:-1](x), dim=1)

    def training_batches(self) -> Chunks:
        """A batch drawn from the current task's training set and the exemplars together."""
        n = self.stream.tasks[self.task].num_train
        draw = torch.randint(n + len(self.buffer), (self.config["batch_size"],),
                             generator=self.generator)
        x, y = self.stream.tasks[self.task].train_batch(draw[draw < n].to(self.device),
                                                        self.generator)   # augmented, if any
        rows = self.buffer.rows(draw[draw >= n] - n)
        return self.chunks(torch.cat([x, rows["x"]]), torch.cat([y, rows["y"]]),
                           torch.cat([torch.full_like(y, self.task), rows["task"]]))

    def summed_loss(self, x: torch.Tensor, y: torch.Tensor, task: int) -> torch.Tensor:
        seen = self.units_per_task * (self.task + 1)      # every unit learned so far
        out = self.model(x)[:, :seen]
        target = F.one_hot(self.class_ids(y, task), seen).float()
        if self.old is not None:
            old = self.units_per_task * self.task
            with torch.no_grad():
                target[:, :old] = torch.sigmoid(self.old(x)[:, :old])
        return F.binary_cross_entropy_with_logits(out, target, reduction="none").mean(1).sum()

    @torch.no_grad()
    def on_task_end(self, task: int) -> None:
        self.freeze_previous()
        self.model.eval()
        per_class = self.buffer.capacity // (self.units_per_task * (task + 1))
        self.buffer.keep_ranked(per_class)
        data = self.stream.tasks[task]
        x, y = data.train_batch(torch.arange(data.num_train, device=self.device))
        features, cls = self.features(x), self.class_ids(y, task)
        for k in torch.unique(cls).tolist():                 # a loop over the task's classes
            members = torch.nonzero(cls == k).squeeze(1)
            chosen = members[herding(features[members], per_class)]
            self.buffer.append({"x": x[chosen], "y": y[chosen], "cls": cls[chosen],
                                "task": torch.full_like(chosen, task),
                                "rank": torch.arange(len(chosen), device=self.device)})

    @torch.no_grad()
    def class_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each unit's normalised mean feature over its exemplars (the task being trained: over
        its training set), and which units have one."""
        rows = self.buffer.stored()
        x, cls = rows["x"], rows["cls"]
        if self.task < len(self.stream.tasks):
            data = self.stream.tasks[self.task]
            x_now, y_now = data.train_batch(torch.arange(data.num_train, device=self.device))
            x, cls = torch.cat([x, x_now]), torch.cat([cls, self.class_ids(y_now, self.task)])
        features = self.features(x)
        units = self.stream.num_outputs
        sums = torch.zeros(units, features.shape[1], device=self.device).index_add_(
            0, cls, features)
        counts = torch.bincount(cls, minlength=units)
        return F.normalize(sums, dim=1), counts > 0

    @torch.no_grad()
    def evaluate(self, *args, **kwargs) -> Evaluation:
        # the base's evaluation (its arguments as they are) with nearest-mean scores in place
        # of the output layer's
        self.model.eval()
        scorer = NearestMean(self.model[:-1], *self.class_means())
        model, self.model = self.model, scorer
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.model = model
