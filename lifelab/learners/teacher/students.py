"""Students: the networks a teacher trains.

A student is an MLP input - hidden - classes whose depth and widths are drawn per student
(`student_depth` / `student_width`, [low, high] inclusive), activation `student_activation`,
init U(+-1/sqrt(fan_in)) as nn.Linear's. Each layer is one (out, in + 1) tensor whose last column
is the bias, an ordinary weight reading a constant input of 1. A student runs functionally on one
flat weight vector (`StudentNet`), P students of one architecture at once, so the meta-gradient
can flow back through an unroll of student steps. Students learn on float rows (N, D) in [0, 1]
(`as_rows`), batches of `student_batch`, cross-entropy loss.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from lifelab.platform.data import Dataset

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}
# each activation's derivative from its output alone (a local quantity of the unit)
DERIVATIVES = {"sigmoid": lambda a: a * (1 - a), "relu": lambda a: (a > 0).to(a),
               "tanh": lambda a: 1 - a * a}


@dataclass(frozen=True)
class StudentTask:
    """One student: its hidden sizes, activation and the seed of its init and batches."""
    hidden: tuple[int, ...]
    activation: str
    seed: int


class StudentNet:
    """A fully connected student run functionally on flat weights (P, num_weights): P students
    of one architecture at once. Layer k is one (out, in + 1) tensor, bias in the last column."""

    def __init__(self, input_dim: int, hidden: tuple[int, ...], classes: int, activation: str):
        sizes = [input_dim, *hidden, classes]
        self.activation = ACTIVATIONS[activation]
        self.derivative = DERIVATIVES[activation]
        self.hidden = hidden
        self.shapes = [(o, i + 1) for i, o in zip(sizes, sizes[1:], strict=False)]
        self.numels = [o * i for o, i in self.shapes]
        self.num_weights = sum(self.numels)
        # the tensor each flat weight belongs to (per-tensor feature scales)
        self.tensor_index = torch.repeat_interleave(torch.arange(len(self.shapes)),
                                                    torch.tensor(self.numels))
        self.tensor_sizes = torch.tensor(self.numels, dtype=torch.float32)

    def init(self, generator: torch.Generator) -> torch.Tensor:
        bounds = torch.cat([torch.full((n,), 1 / math.sqrt(i - 1))
                            for n, (_, i) in zip(self.numels, self.shapes, strict=True)])
        return (torch.rand(self.num_weights, generator=generator) * 2 - 1) * bounds

    def layers(self, w: torch.Tensor) -> list[torch.Tensor]:
        return [part.reshape(len(w), o, i)
                for part, (o, i) in zip(w.split(self.numels, -1), self.shapes, strict=True)]

    def forward(self, w: torch.Tensor, x: torch.Tensor, trace: bool = False
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits (P, B, classes) on x (B, D); with `trace`, each layer's (input, output) activity
        (P, B, .), the output layer's output being the softmax."""
        h = x.expand(len(w), *x.shape)
        layers = self.layers(w)
        activity = []
        for k, layer in enumerate(layers):
            z = torch.baddbmm(layer[..., -1].unsqueeze(1), h, layer[..., :-1].transpose(1, 2))
            last = k == len(layers) - 1
            out = z if last else self.activation(z)
            if trace:
                activity.append((h, z.softmax(-1) if last else out))
            h = out
        return h, activity

    def loss(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (P,) of each student on the batch."""
        logits, _ = self.forward(w, x)
        per_sample = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(w)), reduction="none")
        return per_sample.view(len(w), -1).mean(1)

    def loss_one(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one student w (num_weights,): the function `grad_and_value` takes."""
        logits, _ = self.forward(w[None], x)
        return F.cross_entropy(logits[0], y), logits[0].detach()


def student_for(task: StudentTask, data: Dataset) -> StudentNet:
    return StudentNet(data.input_dim, task.hidden, data.num_classes, task.activation)


@dataclass
class StudentRun:
    """A student being trained by the teacher, with every state its features carry."""
    task: StudentTask
    w: torch.Tensor                   # (num_weights,)
    step: int
    loss0: torch.Tensor               # loss at step 0 (scalar)
    prev_loss: torch.Tensor
    moments: torch.Tensor             # (num_weights, 3) gradient averages (gradient features)
    second: torch.Tensor              # (num_weights,) average squared gradient
    scale: torch.Tensor               # (tensors, groups) running mean squares of the features
    teacher_state: list[torch.Tensor]  # LSTM (h, c) per layer, rows = weights; [] for mlp

    def detached(self) -> StudentRun:
        return dataclasses.replace(self, w=self.w.detach(), loss0=self.loss0.detach(),
                                   prev_loss=self.prev_loss.detach(),
                                   teacher_state=[s.detach() for s in self.teacher_state])

    def to_state(self) -> dict:
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        state["task"] = dataclasses.asdict(self.task)
        return copy.deepcopy(state)

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> StudentRun:
        task = state["task"]
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                  for k, v in state.items() if k not in ("task", "teacher_state")}
        return cls(task=StudentTask(tuple(task["hidden"]), task["activation"], task["seed"]),
                   teacher_state=[s.to(device) for s in state["teacher_state"]], **fields)


@torch.no_grad()
def score(student: StudentNet, w: torch.Tensor, data: Dataset, samples: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss on the first `samples` training images, test accuracy), each (P,); a diverged
    student's loss is inf."""
    loss = student.loss(w, data.x_train[:samples], data.y_train[:samples])
    logits, _ = student.forward(w, data.x_test)
    accuracy = (logits.argmax(-1) == data.y_test).float().mean(1)
    return torch.nan_to_num(loss, nan=math.inf), accuracy


def as_rows(data: Dataset) -> Dataset:
    """The dataset as float rows (N, D) in [0, 1]: students are fully connected. Image-shaped
    or byte datasets are flattened by `Dataset.flat`; float rows pass through."""
    if data.x_train.dim() == 2 and data.x_train.is_floating_point():
        return data
    return data.flat()
