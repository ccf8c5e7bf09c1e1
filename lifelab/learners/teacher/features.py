"""What a teacher reads: one feature row per student weight, normalised per tensor.

Feature sets (`features`):
  gradient       weight, gradient, momenta (bias-corrected averages of the gradient at decays 0.5,
                 0.9, 0.99), the 0.9-momentum over the root of the 0.99 average of the squared
                 gradient (an Adam-like direction), tanh(step / unroll_steps)
  gradient_free  weight, presynaptic activity (batch mean of the layer's input, 1 for a bias),
                 postsynaptic activity (batch mean of the unit's output; softmax at the output
                 layer), their batch-mean outer product E[post pre] (Hebbian), the unit's error
                 e and E[e pre]: at the output e = softmax - one-hot label (the delta rule's
                 term), in a hidden layer e = (B e_out) * f'(post), the output error through a
                 fixed random feedback matrix B per layer and student (direct feedback
                 alignment, Nokland 2016) -- the output's and the hidden layers' error columns
                 kept apart --, an is-output flag, log(loss / initial loss) and log(loss /
                 previous loss). Nothing is backpropagated through the student.

Normalisation: weight, gradient-type and activity features are divided by a per-tensor running
scale (the root of an average, decay 0.9, of the feature's mean square over that tensor; features
of one kind share a scale so their ratios survive), so one teacher sees the same ranges on any
architecture. The positive activities (pre, post, E[post pre]) are first centred per tensor:
uncentred, the teacher's response to them moves every weight of a layer the same way.

Features are inputs to the meta-gradient, not differentiated (the first-order approximation of
Andrychowicz et al. 2016), except the weight column, which keeps its graph (`FeatureNormaliser`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from lifelab.learners.teacher.students import StudentNet, StudentRun, StudentTask

MOMENTUM_DECAYS = (0.5, 0.9, 0.99)
SECOND_MOMENT_DECAY = 0.99
SCALE_DECAY = 0.9                 # the per-tensor running feature scale
EPS = 1e-16                       # inside square roots: features may be exactly zero


@dataclass(frozen=True)
class FeatureSet:
    """Feature columns, their normalisation groups (None: used as is) and the columns centred
    per tensor before scaling."""
    names: tuple[str, ...]
    groups: tuple[int | None, ...]
    centred: tuple[str, ...] = ()

    @property
    def centred_mask(self) -> torch.Tensor:
        return torch.tensor([name in self.centred for name in self.names])

    @property
    def num_groups(self) -> int:
        return max(g for g in self.groups if g is not None) + 1

    def group_matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(columns x groups averaging matrix, its one-hot, mask of the ungrouped columns)."""
        onehot = torch.zeros(len(self.names), self.num_groups)
        for column, group in enumerate(self.groups):
            if group is not None:
                onehot[column, group] = 1.0
        return onehot / onehot.sum(0).clamp(min=1), onehot, onehot.sum(1) == 0


FEATURE_SETS = {
    "gradient": FeatureSet(
        ("weight", "gradient", "momentum_0.5", "momentum_0.9", "momentum_0.99",
         "adam_direction", "step"),
        (0, 1, 1, 1, 1, None, None)),
    "gradient_free": FeatureSet(
        ("weight", "pre", "post", "hebb", "output_error", "output_hebb_error", "hidden_error",
         "hidden_hebb_error", "is_output", "log_loss_ratio", "log_loss_change"),
        (0, 1, 2, 3, 4, 5, 6, 7, None, None, None),
        # activities are positive: uncentred, a teacher's response to them would move every
        # weight of a layer the same way (and a sigmoid layer saturates within a few steps)
        centred=("pre", "post", "hebb")),
}


@dataclass(frozen=True)
class ParamLayout:
    """Which tensor each entry of a flat parameter vector belongs to (per-tensor scales)."""
    tensor_index: torch.Tensor
    tensor_sizes: torch.Tensor

    @classmethod
    def of(cls, params: list[torch.Tensor]) -> ParamLayout:
        sizes = torch.tensor([q.numel() for q in params])
        return cls(torch.repeat_interleave(torch.arange(len(params)), sizes), sizes.float())


def gradient_features(w: torch.Tensor, grad: torch.Tensor, moments: torch.Tensor,
                      second: torch.Tensor, step: int, horizon: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient feature columns (num_weights, 7), with the updated moments and second moment."""
    t = step + 1
    decays = torch.tensor(MOMENTUM_DECAYS, device=w.device)
    moments = decays * moments + (1 - decays) * grad[:, None]
    second = SECOND_MOMENT_DECAY * second + (1 - SECOND_MOMENT_DECAY) * grad.square()
    m_hat = moments / (1 - decays ** t)
    v_hat = second / (1 - SECOND_MOMENT_DECAY ** t)
    adam = m_hat[:, 1] / (v_hat.sqrt() + 1e-8)
    progress = torch.full_like(grad, math.tanh(step / horizon))
    raw = torch.cat([w[:, None], grad[:, None], m_hat, adam[:, None], progress[:, None]], 1)
    return raw, moments, second


def feedback_matrices(task: StudentTask, classes: int) -> list[torch.Tensor]:
    """Fixed random feedback (width, classes) per hidden layer of a student, drawn from its seed:
    how the output error reaches hidden units without backpropagation (direct feedback
    alignment, Nokland 2016)."""
    generator = torch.Generator().manual_seed(task.seed + 1)
    return [torch.randn(width, classes, generator=generator) / math.sqrt(classes)
            for width in task.hidden]


def activity_features(student: StudentNet, w: torch.Tensor,
                      activity: list[tuple[torch.Tensor, torch.Tensor]], y: torch.Tensor,
                      classes: int, feedback: list[torch.Tensor]) -> torch.Tensor:
    """Per-weight local activity columns (num_weights, 9) of one student: weight, pre, post,
    E[post pre], then the unit's error e and E[e pre] in the output columns or in the hidden
    columns (zeros in the others, so one linear map can weigh the exact delta rule at the output
    and the feedback-alignment signal of hidden layers differently), and the is-output flag."""
    rows = []
    layers = student.layers(w.detach()[None])
    # the output units' own error: softmax minus the one-hot target
    error = activity[-1][1][0] - F.one_hot(y, classes).to(w.dtype)
    for k, (inputs, outputs) in enumerate(activity):
        inp = F.pad(inputs[0], (0, 1), value=1.0)            # the bias reads a constant 1
        out = outputs[0]
        batch = len(inp)
        o, i = layers[k].shape[1:]
        pre = inp.mean(0).expand(o, i)
        post = out.mean(0)[:, None].expand(o, i)
        hebb = out.t() @ inp / batch
        last = k == len(activity) - 1
        # a hidden unit's error: the output error through fixed random feedback, times the
        # unit's own derivative; nothing is backpropagated through the student's weights
        unit_error = error if last else (error @ feedback[k].t()) * student.derivative(out)
        post_error = unit_error.mean(0)[:, None].expand(o, i)
        hebb_error = unit_error.t() @ inp / batch
        zero = torch.zeros_like(hebb)
        errors = [post_error, hebb_error, zero, zero] if last else \
            [zero, zero, post_error, hebb_error]
        is_output = torch.full_like(hebb, float(last))
        rows.append(torch.stack([layers[k][0], pre, post, hebb, *errors, is_output],
                                -1).reshape(o * i, 9))
    return torch.cat(rows)


@torch.no_grad()
def gradient_free_features(student: StudentNet, run: StudentRun,
                           activity: list[tuple[torch.Tensor, torch.Tensor]], loss: torch.Tensor,
                           y: torch.Tensor, classes: int, device: torch.device) -> torch.Tensor:
    """The gradient-free feature rows (num_weights, 11) of `run` at this step: the local activity
    columns, then log(loss / initial loss) and log(loss / previous loss) on every row."""
    feedback = [b.to(device) for b in feedback_matrices(run.task, classes)]
    local = activity_features(student, run.w, activity, y, classes, feedback)
    loss0 = loss if run.step == 0 else run.loss0
    prev = loss if run.step == 0 else run.prev_loss
    globals_ = torch.stack([(loss / loss0).log(), (loss / prev).log()])
    return torch.cat([local, globals_.expand(len(local), 2)], 1)


class FeatureNormaliser:
    """Divides feature rows by their per-tensor running scale (centred columns first minus their
    tensor's mean) for one feature set."""

    def __init__(self, feature_set: FeatureSet, device: torch.device):
        averaging, onehot, ungrouped = feature_set.group_matrices()
        self.device = device
        self.group_avg = averaging.to(device)
        self.group_onehot = onehot.to(device)
        self.ungrouped = ungrouped.to(device)
        self.centred = feature_set.centred_mask.to(device)
        self.num_groups = feature_set.num_groups

    def __call__(self, raw: torch.Tensor, scale: torch.Tensor, step: int,
                 layout: StudentNet | ParamLayout, weight: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, new scale). `weight`, the same values as the weight column but with their
        graph, replaces it: the other features are inputs to the meta-gradient (first-order),
        but with the weight column detached too, the loop weight -> teacher -> update -> weight
        is invisible to it, and teachers learned updates that grow with the weight until single
        weights ran away (x100 in 30 steps)."""
        index = layout.tensor_index.to(self.device)
        sizes = layout.tensor_sizes.to(self.device)
        if self.centred.any():
            mean = torch.zeros(len(sizes), raw.shape[1], device=self.device)
            mean = mean.index_add_(0, index, raw) / sizes[:, None]
            raw = raw - (mean * self.centred)[index]
        mean_square = torch.zeros(len(sizes), raw.shape[1], device=self.device)
        mean_square = mean_square.index_add_(0, index, raw.square()) / sizes[:, None]
        scale = SCALE_DECAY * scale + (1 - SCALE_DECAY) * (mean_square @ self.group_avg)
        corrected = scale / (1 - SCALE_DECAY ** (step + 1))
        per_column = torch.where(self.ungrouped, 1.0, corrected @ self.group_onehot.t())
        if weight is not None:
            raw = torch.cat([weight[:, None], raw[:, 1:]], 1)
        return raw * torch.rsqrt(per_column + EPS)[index], scale
