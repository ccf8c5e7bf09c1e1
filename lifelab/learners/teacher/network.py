"""The teacher network and the update it writes.

Teacher (`teacher_kind`): `mlp` (ReLU, `teacher_hidden`) or `lstm` (stacked LSTM cells of the
`teacher_hidden` sizes, a recurrent state per weight), applied to every weight of a student
independently (coordinate-wise, shared by all weights, so it works for any student shape): all
weights of a student are one batch of feature rows. It outputs (direction d, log-magnitude m) per
weight; the update is `step_size * d * exp(m)`, d centred per tensor (no common part moves a
whole layer), m soft-clipped to +-4, and the output layer starts at a tenth of its default init,
so the first steps of a fresh teacher are small.

Population-based search mutates `teacher_hidden` through `resize`: function-preserving widening
(mlp and lstm) through `lifelab.learners.growth`, importance-based narrowing.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lifelab.learners import growth
from lifelab.learners.teacher.features import ParamLayout
from lifelab.learners.teacher.students import StudentNet

MAX_LOG_MAGNITUDE = 4.0           # soft clip of the teacher's log-magnitude output
OUTPUT_INIT_SCALE = 0.1           # a fresh teacher's first steps are small


class TeacherNet(nn.Module):
    """Coordinate-wise teacher: features (rows, f) -> (direction, log-magnitude) per row."""

    def __init__(self, kind: str, num_features: int, hidden: list[int]):
        super().__init__()
        self.kind = kind
        sizes = [num_features, *hidden]
        pairs = list(zip(sizes, sizes[1:], strict=False))
        cell = nn.Linear if kind == "mlp" else nn.LSTMCell
        self.body = nn.ModuleList(cell(i, o) for i, o in pairs)
        self.head = nn.Linear(sizes[-1], 2)
        with torch.no_grad():
            self.head.weight.mul_(OUTPUT_INIT_SCALE)
            self.head.bias.zero_()

    def initial_state(self, rows: int, device: torch.device) -> list[torch.Tensor]:
        if self.kind == "mlp":
            return []
        return [torch.zeros(rows, layer.hidden_size, device=device)
                for layer in self.body for _ in range(2)]

    def forward(self, features: torch.Tensor, state: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, new_state = features, []
        for k, layer in enumerate(self.body):
            if self.kind == "mlp":
                h = F.relu(layer(h))
            else:
                h, c = layer(h, (state[2 * k], state[2 * k + 1]))
                new_state += [h, c]
        return self.head(h), new_state


def weight_update(out: torch.Tensor, layout: StudentNet | ParamLayout, step_size: float,
                  device: torch.device) -> torch.Tensor:
    """The weight update from the teacher's (direction, log-magnitude) rows. The direction is
    centred per tensor: a common part would move every weight of a layer the same way, the first
    thing meta-gradients find (their sum over a layer's weights) and a trap, since on
    non-negative inputs it shifts every unit's input together until the units saturate or the
    output goes uniform."""
    direction, log_magnitude = out.unbind(-1)
    index = layout.tensor_index.to(device)
    sizes = layout.tensor_sizes.to(device)
    mean = torch.zeros(len(sizes), device=device).index_add(0, index, direction)
    direction = direction - (mean / sizes)[index]
    log_magnitude = MAX_LOG_MAGNITUDE * torch.tanh(log_magnitude / MAX_LOG_MAGNITUDE)
    return step_size * direction * log_magnitude.exp()


def resize(model: dict[str, torch.Tensor], states: list[torch.Tensor] | None, kind: str,
           hidden: list[int], generator: torch.Generator) -> None:
    """Resize a teacher's state dict `model` in place to the widths `hidden` (same number of
    layers), and with it the per-weight recurrent states `states` of a student being trained
    (lstm; None: no student). Widening is function-preserving (Net2Net through
    `lifelab.learners.growth`; for lstm a new unit copies a unit's gate rows and recurrent
    state, and every reader of h, the recurrent matrix included, splits that unit's column among
    its copies); narrowing keeps the most important units."""
    lstm = kind == "lstm"
    for k, new_width in enumerate(hidden):
        reader = f"body.{k + 1}.weight_ih" if lstm else f"body.{k + 1}.weight"
        reader = reader if k + 1 < len(hidden) else "head.weight"
        if lstm:
            umap = growth.resize_lstm_cell(model, f"body.{k}", {reader: 0}, new_width,
                                           generator)
            if states is not None:
                for j in (2 * k, 2 * k + 1):      # this layer's (h, c) per student weight
                    states[j] = umap.take(states[j], 1)
        else:
            w_in, b_in = model[f"body.{k}.weight"], model[f"body.{k}.bias"]
            importance = growth.unit_importance(w_in, model[reader], b_in)
            umap = growth.resize_map(len(b_in), new_width, importance, generator)
            model[f"body.{k}.weight"] = umap.take(w_in)
            model[f"body.{k}.bias"] = umap.take(b_in)
            model[reader] = umap.spread(model[reader], 1)
