"""Rehearsal learners: a memory of past training samples (`lifelab.learners.buffer`) replayed on
the shared loop. Each changes one hook or two:

  learner  memory (policy)                 a step
  er       reservoir, every step's batch    B/2 current + B/2 memory samples, one cross-entropy
  der      reservoir, with the logits       B/2 current (CE) + der_alpha * MSE(logits, stored
                                            logits) on B/2 memory samples
  derpp    as der                           der's, + derpp_beta * CE on another B/2 memory
                                            samples' labels
  agem     reservoir over each finished     B current; the gradient is projected when it
           task's training set              conflicts with the memory's (B samples)
  gdumb    class-balanced greedy            B memory samples; the model restarts from its
                                            initial weights when a task begins

(B = batch_size; until the memory holds B/2 samples the current part takes the rest.) DER and ER
follow Mammoth (Buzzega et al. 2020), which draws memory samples without replacement and stores a
step's current batch after the step; DER's stored logits are every output unit's, from the
forward pass of the step that stored them. A-GEM (Chaudhry et al. 2019) projects the flat gradient
g onto the half-space g . g_ref >= 0: g - (g . g_ref / g_ref . g_ref) g_ref when g . g_ref < 0;
its memory holds only finished tasks (the reference is the past), filled at each task's end from
that task's training set through the reservoir, so every finished task keeps an equal share in
expectation. GDumb (Prabhu et al. 2020) learns nothing from the stream but its memory: when a
task begins, the task's training set is offered to the class-balanced memory, and the task's
`steps_per_task` steps train the reset model on the memory alone (retraining from scratch before
each task's evaluation). `icarl` and `lwf` live in `lifelab.learners.distillation`.

Memory samples come only from the training split: ER and DER store a step's rows as the stream
gave them (augmented, where the stream augments), the others unaugmented rows; replayed rows are
not augmented again. A class is a (task, label) pair except in scenario class, whose labels are
global already. In scenario task each memory sample is scored on its own task's head.

Config keys: those of `lifelab.learners.base`, plus
  buffer_size   200   samples the memory holds (mutable under PBT: `adapt` shrinks the memory by
                      its own policy, a larger one fills as samples arrive)
  der_alpha     0.3   der: weight of the logit MSE
  derpp_alpha   0.1   derpp: weight of the logit MSE
  derpp_beta    0.5   derpp: weight of the memory labels' cross-entropy

Metrics: those of `lifelab.learners.base`, plus
  buffer_bytes    bytes of the memory's preallocated tensors
  agem_projected  agem: fraction of the round's steps whose gradient was projected
"""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners.base import ContinualLearner, Param, checked_old_config
from lifelab.learners.buffer import BalancedBuffer, Buffer, Fields, ReservoirBuffer
from lifelab.platform.data import Dataset

Chunks = list[tuple[int, torch.Tensor, torch.Tensor]]

BUFFER_SIZE = Param(200, int, positive=True, doc="samples the rehearsal memory holds")


class Rehearsal(ContinualLearner):
    """A learner with a memory: its buffer, state, resizing and the `buffer_bytes` metric."""

    name = "rehearsal"
    buffer_class: type[Buffer] = ReservoirBuffer
    params = {**ContinualLearner.params, "buffer_size": BUFFER_SIZE}
    metrics = (*ContinualLearner.metrics, "buffer_bytes")
    # the memory's tensors change size with buffer_size: a checkpoint crosses it through `adapt`
    architecture_keys = (*ContinualLearner.architecture_keys, "buffer_size")
    adaptable_keys = ("buffer_size",)

    def __init__(self, config: dict, device: str | torch.device = "cpu",
                 data: Dataset | None = None):
        super().__init__(config, device, data)
        self.units_per_task = self.stream.output_units(0, 1).stop
        self.buffer = self.buffer_class(self.config["buffer_size"], self.buffer_fields(),
                                        self.device)

    def buffer_fields(self) -> Fields:
        return {"x": ((self.stream.input_dim,), torch.float32), "y": ((), torch.long),
                "task": ((), torch.long)}

    def class_ids(self, y: torch.Tensor, task: torch.Tensor | int) -> torch.Tensor:
        """Each sample's class: its label in scenario class, else (task, label) numbered."""
        if self.stream.config.scenario == "class":
            return y
        return y + self.units_per_task * task

    def chunks(self, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> Chunks:
        """Samples of several tasks as the loss's (task, x, y) chunks: one chunk where every
        task is scored on the same units now (scenarios class and domain), else one per task."""
        if self.stream.config.scenario != "task":
            return [(self.task, x, y)]
        return [(t, x[task == t], y[task == t]) for t in torch.unique(task).tolist()]

    def memory_loss(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of memory rows, each through its own task's units."""
        chunks = self.chunks(rows["x"], rows["y"], rows["task"])
        return sum(self.summed_loss(x, y, t) for t, x, y in chunks) / len(rows["y"])

    def current_with_memory(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """B - b current samples and b = min(B/2, memory) as the number of memory rows."""
        batch = self.config["batch_size"]
        from_memory = min(batch // 2, len(self.buffer))
        return (*self.sample(self.task, batch - from_memory), from_memory)

    def step_round(self) -> dict[str, float]:
        metrics = super().step_round()
        metrics["buffer_bytes"] = float(self.buffer.nbytes)
        return metrics

    # -- state ---------------------------------------------------------------------------------

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        buffer = Buffer.from_state(state["buffer"], self.device)
        if buffer.capacity != self.config["buffer_size"]:
            raise ConfigError(f"{self.name}: the checkpoint's memory holds {buffer.capacity} "
                              f"samples, this config's buffer_size is "
                              f"{self.config['buffer_size']}: load it through adapt")
        self.buffer = buffer

    def adapt(self, state: dict, old_config: dict) -> None:
        """Load a checkpoint made under another buffer_size (PBT mutating it): a smaller memory
        keeps the subset its policy keeps; a larger one keeps every sample and fills as samples
        arrive. The resizing draws from the checkpoint's generator, so it is reproducible."""
        checked_old_config(self, old_config)
        generator = torch.Generator().set_state(state["generator"])
        extra = dict(state["extra"])
        buffer = Buffer.from_state(extra["buffer"], self.device)
        extra["buffer"] = buffer.resize(self.config["buffer_size"], generator).state_dict()
        self.load_state_dict({**state, "extra": extra, "generator": generator.get_state()})


class ER(Rehearsal):
    """Experience replay: half of each batch from the reservoir."""

    name = "er"

    def training_batches(self) -> Chunks:
        x, y, from_memory = self.current_with_memory()
        self.current = (x, y)
        task = torch.full_like(y, self.task)
        if from_memory:
            rows = self.buffer.sample(from_memory, self.generator)
            x, y, task = (torch.cat([x, rows["x"]]), torch.cat([y, rows["y"]]),
                          torch.cat([task, rows["task"]]))
        return self.chunks(x, y, task)

    def after_step(self) -> None:
        x, y = self.current
        self.buffer.add({"x": x, "y": y, "task": torch.full_like(y, self.task)}, self.generator)


class DER(Rehearsal):
    """Dark experience replay: match the logits the memory stored."""

    name = "der"
    alpha_key = "der_alpha"
    params = {**Rehearsal.params,
              "der_alpha": Param(0.3, float, low=0.0, doc="weight of the logit MSE")}

    def buffer_fields(self) -> Fields:
        return {**super().buffer_fields(),
                "logits": ((self.stream.num_outputs,), torch.float32)}

    def training_batches(self) -> Chunks:
        x, y, from_memory = self.current_with_memory()
        self.current = (x, y)
        self.replay = [self.buffer.sample(from_memory, self.generator)] if from_memory else []
        return [(self.task, x, y)]

    def summed_loss(self, x: torch.Tensor, y: torch.Tensor, task: int) -> torch.Tensor:
        # the base's loss, keeping every unit's logits of the step's one forward pass to store
        out = self.model(x)
        self.current_logits = out.detach()
        units = self.stream.output_units(task, self.task + 1)
        return F.cross_entropy(out[:, units], y, reduction="sum")

    def penalty(self) -> torch.Tensor | float:
        if not self.replay:
            return 0.0
        rows = self.replay[0]
        return self.config[self.alpha_key] * F.mse_loss(self.model(rows["x"]), rows["logits"])

    def after_step(self) -> None:
        x, y = self.current
        self.buffer.add({"x": x, "y": y, "task": torch.full_like(y, self.task),
                         "logits": self.current_logits}, self.generator)


class DERpp(DER):
    """DER++: DER plus the cross-entropy of other memory samples' labels."""

    name = "derpp"
    alpha_key = "derpp_alpha"
    params = {**Rehearsal.params,
              "derpp_alpha": Param(0.1, float, low=0.0, doc="weight of the logit MSE"),
              "derpp_beta": Param(0.5, float, low=0.0,
                                  doc="weight of the memory labels' cross-entropy")}

    def training_batches(self) -> Chunks:
        chunks = super().training_batches()
        if self.replay:                  # an independent draw, as in the paper's algorithm
            self.replay.append(self.buffer.sample(len(self.replay[0]["y"]), self.generator))
        return chunks

    def penalty(self) -> torch.Tensor | float:
        if not self.replay:
            return 0.0
        labels = self.replay[1]
        return super().penalty() + self.config["derpp_beta"] * self.labels_loss(labels)

    def labels_loss(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        # the base's cross-entropy (DER's summed_loss would overwrite the logits it keeps)
        chunks = self.chunks(rows["x"], rows["y"], rows["task"])
        return sum(ContinualLearner.summed_loss(self, x, y, t)
                   for t, x, y in chunks) / len(rows["y"])


def agem_project(grad: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A-GEM: `grad` unchanged if it agrees with `reference` (g . r >= 0), else its projection
    onto the plane orthogonal to `reference`, g - (g . r / r . r) r."""
    dot = grad @ reference
    projected = grad - (dot / (reference @ reference).clamp_min(1e-30)) * reference
    return torch.where(dot < 0, projected, grad)


class AGEM(Rehearsal):
    """Averaged GEM: no step may increase the loss on the memory (to first order)."""

    name = "agem"
    metrics = (*Rehearsal.metrics, "agem_projected")

    def __init__(self, config: dict, device: str | torch.device = "cpu",
                 data: Dataset | None = None):
        super().__init__(config, device, data)
        self.projected = torch.zeros((), device=self.device)   # summed on device: no sync
        self.round_steps = 0

    def step_round(self) -> dict[str, float]:
        self.projected.zero_()
        self.round_steps = 0
        metrics = super().step_round()
        metrics["agem_projected"] = self.projected.item() / self.round_steps
        return metrics

    def before_step(self) -> None:
        self.round_steps += 1
        if not len(self.buffer):
            return
        params = [p for p in self.model.parameters() if p.grad is not None]
        rows = self.buffer.sample(self.config["batch_size"], self.generator)
        reference = torch.autograd.grad(self.memory_loss(rows), params, allow_unused=True)
        grad = torch.cat([p.grad.reshape(-1) for p in params])
        flat_ref = torch.cat([(torch.zeros_like(p) if r is None else r).reshape(-1)
                              for p, r in zip(params, reference, strict=True)])
        self.projected += (grad @ flat_ref < 0).float()
        new = agem_project(grad, flat_ref)
        offset = 0
        for p in params:
            p.grad.copy_(new[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    @torch.no_grad()
    def on_task_end(self, task: int) -> None:
        data = self.stream.tasks[task]
        x, y = data.train_batch(torch.randperm(data.num_train, generator=self.generator)
                                .to(self.device))
        self.buffer.add({"x": x, "y": y, "task": torch.full_like(y, task)}, self.generator)


class GDumb(Rehearsal):
    """GDumb: a class-balanced memory, and a model retrained on it alone for every task."""

    name = "gdumb"
    buffer_class = BalancedBuffer

    def __init__(self, config: dict, device: str | torch.device = "cpu",
                 data: Dataset | None = None):
        super().__init__(config, device, data)
        self.initial = copy.deepcopy(self.model.state_dict())   # a function of the seed
        self.stored_task = -1            # the last task whose training set the memory was offered

    def buffer_fields(self) -> Fields:
        return {**super().buffer_fields(), "cls": ((), torch.long)}

    def training_batches(self) -> Chunks:
        if self.stored_task != self.task:
            self._begin_task()
        rows = self.buffer.sample(self.config["batch_size"], self.generator)
        return self.chunks(rows["x"], rows["y"], rows["task"])

    @torch.no_grad()
    def _begin_task(self) -> None:
        data = self.stream.tasks[self.task]
        x, y = data.train_batch(torch.randperm(data.num_train, generator=self.generator)
                                .to(self.device))
        self.buffer.add({"x": x, "y": y, "task": torch.full_like(y, self.task),
                         "cls": self.class_ids(y, self.task)}, self.generator)
        self.model.load_state_dict(self.initial)           # retrain from scratch
        self.optimizer.state.clear()
        self.stored_task = self.task

    def extra_state(self) -> dict:
        return {**super().extra_state(), "stored_task": self.stored_task}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.stored_task = state["stored_task"]
