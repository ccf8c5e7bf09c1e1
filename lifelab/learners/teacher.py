"""Teacher networks: learned optimizers that replace gradient descent (issue 7).

A *teacher* is one small network applied to every weight of a *student* independently
(coordinate-wise, shared by all weights, so it works for any student shape). It reads each
weight's local state and writes its update. All weights of a student are one batch of feature
rows; the student runs functionally on one flat weight vector (`StudentNet`), so the meta-gradient
can flow back through an unroll of student steps.

Students: MLPs input - hidden - classes, depth and widths drawn per student from
`student_depth` / `student_width` ([low, high], inclusive), activation `student_activation`,
init U(+-1/sqrt(fan_in)) as nn.Linear's. Each layer is one (out, in + 1) tensor whose last column
is the bias, an ordinary weight reading a constant input of 1. Students learn on the meta-training
dataset `stream.dataset` (its training split), batches of `student_batch`, cross-entropy loss.

Teacher (`teacher_kind`): `mlp` (ReLU, `teacher_hidden`) or `lstm` (stacked LSTM cells of the
`teacher_hidden` sizes, a recurrent state per weight). It outputs (direction d, log-magnitude m)
per weight; the update is `step_size * d * exp(m)` (m soft-clipped to +-4), and the output layer
starts at a tenth of its default init, so the first steps of a fresh teacher are small.

Feature sets (`features`), one row per student weight:
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
Weight, gradient-type and activity features are divided by a per-tensor running scale (the
root of an average, decay 0.9, of the feature's mean square over that tensor; features of one kind
share a scale so their ratios survive), so one teacher sees the same ranges on any architecture.
The positive activities (pre, post, E[post pre]) are first centred per tensor: uncentred, the
teacher's response to them moves every weight of a layer the same way.

Meta-training: draw a student, unroll `unroll_steps` steps with the teacher, cut into windows of
`truncation` steps; each window is one meta-step. Meta-objective of a window: the mean over its
steps of log(loss_t / loss_0) (capped at 2, a 7x blow-up; normalised across tasks by loss_0), or
with `meta_objective: error` the mean batch error (not differentiable: needs es).
`meta_gradient: bptt`: truncated backpropagation through the window (features are inputs, not
differentiated: the first-order approximation of Andrychowicz et al. 2016), Adam on the teacher at
`meta_lr`, gradient norm clipped to 1. `meta_gradient: es`: antithetic evolution strategies,
`es_pairs` pairs of perturbations of std `es_sigma` evaluated on the same window from the same
student state, then the student advances with the updated teacher. A window whose meta-gradient is
not finite is skipped and a fresh student drawn. `done` after `meta_steps` meta-steps.
EXPERIMENTAL, `meta_optimizer: self` (gradient features only): the teacher applies the
meta-gradient to its own parameters instead of Adam, reading them as it reads a student's weights
(self-application; its own feature state restarts when adapt resizes it).

Meta-test (every `eval_every` rounds and at the end): `eval_students` held-out students of
architecture `eval_hidden` on `eval_dataset` (default: the meta-training dataset), drawn from
`stream.seed` so every trial of a sweep meets the same ones, are trained N = `eval_steps` steps
(and 2N, and 10N with `eval_long`) by the teacher and by SGD and Adam whose learning rates are
tuned per student and per horizon on a grid (ADAM_GRID, SGD_GRID: the best final loss wins; all
grid rates train as one batch). Every optimizer sees the same initial weights and batches. Loss:
cross-entropy on the first `eval_samples` training images (the objective being optimized);
accuracy: on the dataset's test split. The baselines are computed once per learner (they do not
depend on the teacher) and kept in memory.

Population-based search mutates `teacher_hidden` through `adapt`: function-preserving widening
(mlp and lstm) through `lifelab.learners.growth`, importance-based narrowing.

Config keys (default):
  teacher_kind          mlp        mlp | lstm
  teacher_hidden        [32]       hidden sizes of the teacher (mutable under PBT via adapt)
  features              gradient   gradient | gradient_free
  step_size             0.01       scale of every update (step_size * d * exp(m))
  meta_gradient         bptt       bptt | es
  meta_objective        log_loss   log_loss | error (error needs es)
  meta_lr               0.001      Adam learning rate of the teacher
  meta_optimizer        adam       adam | self (experimental: the teacher optimizes itself)
  unroll_steps          100        student steps before a new student is drawn
  truncation            10         student steps per meta-step (>= 2)
  es_pairs, es_sigma    4, 0.01    antithetic pairs and perturbation std (es)
  meta_steps            2000       meta-training budget; `done` after it
  meta_steps_per_round  20         meta-steps per round
  student_depth         [1, 2]     hidden layers of meta-training students, [low, high]
  student_width         [20, 50]   width of each of their hidden layers, [low, high]
  student_activation    sigmoid    sigmoid | relu | tanh (meta-training and meta-test)
  student_batch         128        samples per student step
  eval_hidden           [64]       held-out architecture of meta-test students
  eval_dataset          ""         meta-test dataset ("": the meta-training dataset)
  eval_students         2          held-out students per meta-test
  eval_steps            100        N: meta-test horizon
  eval_long             false      also measure at 10N
  eval_samples          1000       training images the meta-test loss is measured on
  eval_every            1          rounds between meta-tests
The stream names the meta-training dataset only: `stream.dataset`, `stream.seed` (the held-out
students), `stream.data_root`, `stream.download`; its task keys mean nothing here and are refused.

Metrics (losses are geometric means over held-out students, accuracies arithmetic means):
  meta_loss            mean meta-objective of the round's meta-steps
  train_loss           mean student training loss over the round's student steps
  meta_steps           meta-steps done so far
  students             meta-training students drawn so far
  loss_teacher         meta-test loss after N steps with the teacher
  loss_adam, loss_sgd  the same with tuned Adam / tuned SGD
  acc_teacher, acc_adam, acc_sgd   meta-test accuracy after N steps
  loss_ratio_adam      loss_teacher / loss_adam at N (the PBT objective, mode min; < 1: better)
  loss_ratio_sgd       loss_teacher / loss_sgd at N
  loss_ratio_adam_2n   the ratio at 2N (beyond the meta-training horizon when unroll_steps = N)
  loss_ratio_adam_10n  the ratio at 10N (with eval_long)
The meta-test metrics are those of the last meta-test (reported every round once there is one).
A meta-learner has no accuracy matrix: `rows` stays empty.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners import growth
from lifelab.learners.base import (
    Evaluation,
    Learner,
    Param,
    checked_old_config,
    checked_params,
    checked_seed,
)
from lifelab.platform.data import DATASETS, Dataset, load_dataset, load_stream_dataset
from lifelab.platform.streams import StreamConfig

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}
# each activation's derivative from its output alone (a local quantity of the unit)
DERIVATIVES = {"sigmoid": lambda a: a * (1 - a), "relu": lambda a: (a > 0).to(a),
               "tanh": lambda a: 1 - a * a}
MOMENTUM_DECAYS = (0.5, 0.9, 0.99)
SECOND_MOMENT_DECAY = 0.99
SCALE_DECAY = 0.9                 # the per-tensor running feature scale
EPS = 1e-16                       # inside square roots: features may be exactly zero
ADAM_GRID = tuple(10 ** (e / 2) for e in range(-8, -1))   # 1e-4 .. 1e-1, half decades
SGD_GRID = tuple(10 ** (e / 2) for e in range(-4, 3))     # 1e-2 .. 10
META_LOSS_CAP = 2.0               # log(loss_t / loss_0) counts at most this (a 7x blow-up)
MAX_LOG_MAGNITUDE = 4.0           # soft clip of the teacher's log-magnitude output
OUTPUT_INIT_SCALE = 0.1           # a fresh teacher's first steps are small
META_GRAD_CLIP = 1.0
STREAM_KEYS = ("dataset", "seed", "data_root", "download")
HELDOUT_SEED = 10_000_019         # held-out student seeds: HELDOUT_SEED * (stream.seed + 1) + i


# -- students -----------------------------------------------------------------------------------

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


@torch.no_grad()
def score(student: StudentNet, w: torch.Tensor, data: Dataset, samples: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss on the first `samples` training images, test accuracy), each (P,); a diverged
    student's loss is inf."""
    loss = student.loss(w, data.x_train[:samples], data.y_train[:samples])
    logits, _ = student.forward(w, data.x_test)
    accuracy = (logits.argmax(-1) == data.y_test).float().mean(1)
    return torch.nan_to_num(loss, nan=math.inf), accuracy


# -- features -----------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class ParamLayout:
    """Which tensor each entry of a flat parameter vector belongs to (per-tensor scales)."""
    tensor_index: torch.Tensor
    tensor_sizes: torch.Tensor

    @classmethod
    def of(cls, params: list[torch.Tensor]) -> ParamLayout:
        sizes = torch.tensor([q.numel() for q in params])
        return cls(torch.repeat_interleave(torch.arange(len(params)), sizes), sizes.float())


# -- the teacher network ------------------------------------------------------------------------

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


# -- tuned baselines ----------------------------------------------------------------------------

def tuned_baseline(student: StudentNet, w0: torch.Tensor, data: Dataset, batches: torch.Tensor,
                   optimizer: str, horizons: list[int], samples: int) -> dict[int, tuple]:
    """Train one student from w0 with `optimizer` (sgd | adam) at every rate of its grid at once
    (one param group per rate, the students stacked into one batched forward) on `batches`
    (steps, B) of indices; per horizon, the (loss, accuracy, rate) of the rate whose loss is
    lowest there."""
    grid = SGD_GRID if optimizer == "sgd" else ADAM_GRID
    weights = [w0.clone().requires_grad_() for _ in grid]
    groups = [{"params": [w], "lr": lr} for w, lr in zip(weights, grid, strict=True)]
    opt = torch.optim.SGD(groups) if optimizer == "sgd" else torch.optim.Adam(groups)
    best = {}
    for t in range(max(horizons)):
        idx = batches[t]
        # the students are independent: the gradient of the sum is each one's own gradient
        student.loss(torch.stack(weights), data.x_train[idx], data.y_train[idx]).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if t + 1 in horizons:
            loss, accuracy = score(student, torch.stack(weights).detach(), data, samples)
            k = int(loss.argmin())
            best[t + 1] = (loss[k].item(), accuracy[k].item(), grid[k])
    return best


# -- the learner --------------------------------------------------------------------------------

def _range_param(default: list[int], doc: str) -> Param:
    return Param(default, list, doc=doc)


class Teacher(Learner):
    """A learned optimizer (teacher network) meta-trained to train held-out student networks."""

    name = "teacher"
    params: dict[str, Param] = {
        "teacher_kind": Param("mlp", str, choices=("mlp", "lstm"), doc="teacher network kind"),
        "teacher_hidden": Param([32], list, doc="hidden sizes of the teacher"),
        "features": Param("gradient", str, choices=tuple(FEATURE_SETS), doc="feature set"),
        "step_size": Param(0.01, float, positive=True, doc="scale of every update"),
        "meta_gradient": Param("bptt", str, choices=("bptt", "es"), doc="meta-gradient"),
        "meta_objective": Param("log_loss", str, choices=("log_loss", "error"),
                                doc="meta-objective per step"),
        "meta_lr": Param(1e-3, float, positive=True, doc="Adam learning rate of the teacher"),
        "meta_optimizer": Param("adam", str, choices=("adam", "self"),
                                doc="what applies the meta-gradient (self: experimental)"),
        "unroll_steps": Param(100, int, positive=True, doc="student steps per student"),
        "truncation": Param(10, int, low=2, doc="student steps per meta-step"),
        "es_pairs": Param(4, int, positive=True, doc="antithetic pairs per ES estimate"),
        "es_sigma": Param(0.01, float, positive=True, doc="ES perturbation std"),
        "meta_steps": Param(2000, int, positive=True, doc="meta-training budget (meta-steps)"),
        "meta_steps_per_round": Param(20, int, positive=True, doc="meta-steps per round"),
        "student_depth": _range_param([1, 2], "hidden layers of students, [low, high]"),
        "student_width": _range_param([20, 50], "hidden widths of students, [low, high]"),
        "student_activation": Param("sigmoid", str, choices=tuple(ACTIVATIONS),
                                    doc="student activation"),
        "student_batch": Param(128, int, positive=True, doc="samples per student step"),
        "eval_hidden": Param([64], list, doc="held-out architecture of meta-test students"),
        "eval_dataset": Param("", str, choices=("", *DATASETS), doc="meta-test dataset"),
        "eval_students": Param(2, int, positive=True, doc="held-out students per meta-test"),
        "eval_steps": Param(100, int, positive=True, doc="N, the meta-test horizon"),
        "eval_long": Param(False, bool, doc="also measure at 10N"),
        "eval_samples": Param(1000, int, positive=True, doc="images the meta-test loss uses"),
        "eval_every": Param(1, int, positive=True, doc="rounds between meta-tests"),
    }
    metrics: tuple[str, ...] = (
        "meta_loss", "train_loss", "meta_steps", "students", "loss_teacher", "loss_adam",
        "loss_sgd", "acc_teacher", "acc_adam", "acc_sgd", "loss_ratio_adam", "loss_ratio_sgd",
        "loss_ratio_adam_2n", "loss_ratio_adam_10n")
    architecture_keys: tuple[str, ...] = ("teacher_kind", "teacher_hidden", "features")
    adaptable_keys: tuple[str, ...] = ("teacher_hidden",)

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        """The config with defaults filled in; raises ConfigError naming a bad key."""
        full = checked_params(cls.name, cls.params, config)
        for key in ("student_depth", "student_width"):
            value = full[key]
            if len(value) != 2 or value[0] > value[1]:
                raise ConfigError(f"teacher config '{key}' must be [low, high] with low <= high, "
                                  f"got {value!r}")
        if full["truncation"] > full["unroll_steps"]:
            raise ConfigError(f"teacher config 'truncation' ({full['truncation']}) must be <= "
                              f"unroll_steps ({full['unroll_steps']}): lower it or raise "
                              "unroll_steps")
        if full["meta_optimizer"] == "self" and full["features"] != "gradient":
            raise ConfigError("teacher config 'meta_optimizer' self reads the teacher's own "
                              "meta-gradients: set features: gradient (or meta_optimizer: adam)")
        if full["meta_objective"] == "error" and full["meta_gradient"] != "es":
            raise ConfigError("teacher config 'meta_objective' error is not differentiable: "
                              "set meta_gradient: es (or meta_objective: log_loss)")
        stream = config.get("stream") or {}
        if not isinstance(stream, dict):
            raise ConfigError(f"stream must be a mapping such as {{dataset: mnist5k}}, "
                              f"got {stream!r}")
        for key in stream:
            if key not in STREAM_KEYS:
                raise ConfigError(f"stream.{key} means nothing to learner 'teacher' (its stream "
                                  f"only names the meta-training data): remove it, keep "
                                  f"{', '.join(STREAM_KEYS)}")
        full["stream"] = StreamConfig.from_dict(stream)
        full["seed"] = checked_seed(config)
        return full

    def __init__(self, config: dict, device: str | torch.device = "cpu",
                 data: Dataset | None = None):
        self.config = self.validate_config(config)
        self.device = torch.device(device)
        stream: StreamConfig = self.config["stream"]
        data = data if data is not None else load_stream_dataset(stream)
        self.data = _to_device(data, self.device)
        eval_name = self.config["eval_dataset"] or data.name
        self.eval_data = self.data if eval_name == data.name else _to_device(
            load_dataset(eval_name, stream.data_root, stream.download), self.device)
        self.feature_set = FEATURE_SETS[self.config["features"]]
        averaging, onehot, ungrouped = self.feature_set.group_matrices()
        self._group_avg = averaging.to(self.device)
        self._group_onehot = onehot.to(self.device)
        self._ungrouped = ungrouped.to(self.device)
        self._centred = self.feature_set.centred_mask.to(self.device)
        with torch.random.fork_rng(devices=[]):   # teacher init from the seed, global RNG untouched
            torch.manual_seed(self.config["seed"])
            self.teacher = TeacherNet(self.config["teacher_kind"], len(self.feature_set.names),
                                      self.config["teacher_hidden"]).to(self.device)
        self.meta_opt = torch.optim.Adam(self.teacher.parameters(), lr=self.config["meta_lr"])
        self.generator = torch.Generator().manual_seed(self.config["seed"])
        self.run: StudentRun | None = None
        self.self_state: dict | None = None      # the teacher's state as its own optimizer
        self.meta_step_count = 0
        self.students = 0
        self.rounds = 0
        self.last_test: dict[str, float] = {}
        self.rows: list[list[float]] = []       # a meta-learner has no accuracy matrix
        self._baselines: dict = {}              # held-out task -> tuned SGD / Adam results

    @property
    def done(self) -> bool:
        return self.meta_step_count >= self.config["meta_steps"]

    # -- one student step with the teacher -----------------------------------------------------

    def new_run(self, task: StudentTask, w0: torch.Tensor, data: Dataset) -> StudentRun:
        student = student_for(task, data)
        n, d = student.num_weights, self.device
        zero = torch.zeros((), device=d)
        return StudentRun(task, w0.to(d), 0, zero, zero, torch.zeros(n, len(MOMENTUM_DECAYS),
                                                                      device=d),
                          torch.zeros(n, device=d),
                          torch.zeros(len(student.shapes), self.feature_set.num_groups, device=d),
                          self.teacher.initial_state(n, d))

    def advance(self, run: StudentRun, x: torch.Tensor, y: torch.Tensor, data: Dataset,
                params: dict[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, StudentRun]:
        """One student step: (loss before it, batch accuracy, the run after it). The loss keeps
        its graph to the teacher's parameters through the updates of earlier steps;
        `params` replaces the teacher's parameters (ES perturbations)."""
        student = student_for(run.task, data)
        moments, second = run.moments, run.second
        if self.config["features"] == "gradient":
            grad, (loss, logits) = grad_and_value(student.loss_one, has_aux=True)(run.w, x, y)
            raw, moments, second = gradient_features(run.w.detach(), grad.detach(), moments,
                                                     second, run.step,
                                                     self.config["unroll_steps"])
        else:
            logits_p, activity = student.forward(run.w[None], x, trace=True)
            logits = logits_p[0]
            loss = F.cross_entropy(logits, y)
            with torch.no_grad():
                feedback = [b.to(self.device)
                            for b in feedback_matrices(run.task, data.num_classes)]
                local = activity_features(student, run.w, activity, y, data.num_classes,
                                          feedback)
                loss0 = loss if run.step == 0 else run.loss0
                prev = loss if run.step == 0 else run.prev_loss
                globals_ = torch.stack([(loss / loss0).log(), (loss / prev).log()])
                raw = torch.cat([local, globals_.expand(len(local), 2)], 1)
        loss0 = loss.detach() if run.step == 0 else run.loss0
        features, scale = self.normalise(raw.detach(), run.scale, run.step, student)
        if params is None:
            out, teacher_state = self.teacher(features, run.teacher_state)
        else:
            out, teacher_state = functional_call(self.teacher, params,
                                                 (features, run.teacher_state))
        accuracy = (logits.argmax(-1) == y).float().mean()
        after = StudentRun(run.task, run.w + self.update(out), run.step + 1, loss0, loss.detach(),
                           moments, second, scale, teacher_state)
        return loss, accuracy, after

    def update(self, out: torch.Tensor) -> torch.Tensor:
        """The weight update from the teacher's (direction, log-magnitude) rows."""
        direction, log_magnitude = out.unbind(-1)
        log_magnitude = MAX_LOG_MAGNITUDE * torch.tanh(log_magnitude / MAX_LOG_MAGNITUDE)
        return self.config["step_size"] * direction * log_magnitude.exp()

    def normalise(self, raw: torch.Tensor, scale: torch.Tensor, step: int,
                  student: StudentNet | ParamLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """Features divided by their per-tensor running scale (centred columns first minus
        their tensor's mean); returns (features, new scale)."""
        index = student.tensor_index.to(self.device)
        sizes = student.tensor_sizes.to(self.device)
        if self._centred.any():
            mean = torch.zeros(len(sizes), raw.shape[1], device=self.device)
            mean = mean.index_add_(0, index, raw) / sizes[:, None]
            raw = raw - (mean * self._centred)[index]
        mean_square = torch.zeros(len(sizes), raw.shape[1], device=self.device)
        mean_square = mean_square.index_add_(0, index, raw.square()) / sizes[:, None]
        scale = SCALE_DECAY * scale + (1 - SCALE_DECAY) * (mean_square @ self._group_avg)
        corrected = scale / (1 - SCALE_DECAY ** (step + 1))
        per_column = torch.where(self._ungrouped, 1.0, corrected @ self._group_onehot.t())
        return raw * torch.rsqrt(per_column + EPS)[index], scale

    def objective(self, loss: torch.Tensor, accuracy: torch.Tensor,
                  loss0: torch.Tensor) -> torch.Tensor:
        if self.config["meta_objective"] == "error":
            return 1 - accuracy
        return (loss / loss0).log().clamp(max=META_LOSS_CAP)

    def window(self, run: StudentRun, batches: list[tuple[torch.Tensor, torch.Tensor]],
               params: dict[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, list[torch.Tensor], StudentRun]:
        """Train `run` over `batches`: (mean meta-objective, the losses, the run after)."""
        terms, losses = [], []
        for x, y in batches:
            loss, accuracy, run = self.advance(run, x, y, self.data, params)
            # the student's first loss is its own reference: loss0 is set by that step
            terms.append(self.objective(loss, accuracy, run.loss0))
            losses.append(loss.detach())
        return torch.stack(terms).mean(), losses, run

    # -- meta-training -------------------------------------------------------------------------

    def sample_task(self) -> StudentTask:
        low, high = self.config["student_depth"]
        depth = int(torch.randint(low, high + 1, (), generator=self.generator))
        w_low, w_high = self.config["student_width"]
        hidden = torch.randint(w_low, w_high + 1, (depth,), generator=self.generator).tolist()
        seed = int(torch.randint(2**31 - 1, (), generator=self.generator))
        return StudentTask(tuple(hidden), self.config["student_activation"], seed)

    def fresh_run(self) -> StudentRun:
        task = self.sample_task()
        self.students += 1
        student = student_for(task, self.data)
        return self.new_run(task, student.init(torch.Generator().manual_seed(task.seed)),
                            self.data)

    def draw_batches(self, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.randint(len(self.data.y_train), (steps, self.config["student_batch"]),
                            generator=self.generator).to(self.device)
        return [(self.data.x_train[i], self.data.y_train[i]) for i in idx]

    def meta_step(self) -> tuple[float, list[torch.Tensor]]:
        """One truncation window of meta-training: (meta-objective, student losses)."""
        if self.run is None or self.run.step >= self.config["unroll_steps"]:
            self.run = self.fresh_run()
        steps = min(self.config["truncation"], self.config["unroll_steps"] - self.run.step)
        batches = self.draw_batches(steps)
        self.meta_opt.zero_grad(set_to_none=True)
        if self.config["meta_gradient"] == "bptt":
            objective, losses, run = self.window(self.run, batches)
            if objective.requires_grad:
                objective.backward()
        else:
            objective, losses, run = self.es_step(batches)
        grads = [p.grad for p in self.teacher.parameters() if p.grad is not None]
        finite = bool(torch.isfinite(objective)) and all(torch.isfinite(g).all() for g in grads)
        if finite:
            nn.utils.clip_grad_norm_(self.teacher.parameters(), META_GRAD_CLIP)
            if self.config["meta_optimizer"] == "self":
                self.self_step()
            else:
                self.meta_opt.step()
            self.run = run.detached()
        else:   # a blown-up student: no update from it, a fresh one next
            self.meta_opt.zero_grad(set_to_none=True)
            self.run = None
        return objective.item(), losses

    @torch.no_grad()
    def self_step(self) -> None:
        """EXPERIMENTAL self-application: the teacher updates its own parameters from their
        meta-gradients in `.grad`, reading them as gradient features like any student's (one
        tensor per parameter for the feature scales; the step count runs over meta_steps)."""
        params = list(self.teacher.parameters())
        w = nn.utils.parameters_to_vector(params)
        grad = torch.cat([(torch.zeros_like(q) if q.grad is None else q.grad).flatten()
                          for q in params])
        layout = ParamLayout.of(params)
        state = self.self_state
        if state is None or len(state["moments"]) != len(w):   # new, or resized by adapt
            state = {"moments": torch.zeros(len(w), len(MOMENTUM_DECAYS), device=self.device),
                     "second": torch.zeros_like(w), "step": 0,
                     "scale": torch.zeros(len(params), self.feature_set.num_groups,
                                          device=self.device),
                     "teacher_state": self.teacher.initial_state(len(w), self.device)}
        raw, moments, second = gradient_features(w, grad, state["moments"], state["second"],
                                                 state["step"], self.config["meta_steps"])
        features, scale = self.normalise(raw, state["scale"], state["step"], layout)
        out, teacher_state = self.teacher(features, state["teacher_state"])
        nn.utils.vector_to_parameters(w + self.update(out), params)
        self.self_state = {"moments": moments, "second": second, "step": state["step"] + 1,
                           "scale": scale, "teacher_state": teacher_state}

    def es_step(self, batches: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[torch.Tensor, list[torch.Tensor], StudentRun]:
        """Antithetic ES estimate of the window's meta-gradient into `.grad` (same student state
        and batches for every perturbation), then the window with the current teacher."""
        sigma, pairs = self.config["es_sigma"], self.config["es_pairs"]
        params = dict(self.teacher.named_parameters())
        with torch.no_grad():
            grads = {name: torch.zeros_like(p) for name, p in params.items()}
            for _ in range(pairs):
                noise = {name: torch.randn(p.shape, generator=self.generator).to(p)
                         for name, p in params.items()}
                plus, _, _ = self.window(self.run, batches,
                                         {n: p + sigma * noise[n] for n, p in params.items()})
                minus, _, _ = self.window(self.run, batches,
                                          {n: p - sigma * noise[n] for n, p in params.items()})
                for name in grads:
                    grads[name] += (plus - minus) / (2 * sigma * pairs) * noise[name]
            for name, p in params.items():
                p.grad = grads[name]
            return self.window(self.run, batches)

    def step_round(self) -> dict[str, float]:
        if self.done:
            raise RuntimeError("the learner has used its meta-training budget; check `done` first")
        objectives, losses = [], []
        for _ in range(min(self.config["meta_steps_per_round"],
                           self.config["meta_steps"] - self.meta_step_count)):
            objective, window_losses = self.meta_step()
            objectives.append(objective)
            losses += window_losses
            self.meta_step_count += 1
        self.rounds += 1
        if self.rounds % self.config["eval_every"] == 0 or self.done:
            self.last_test = self.meta_test()
        train_loss = torch.stack(losses).mean().item()
        if not all(torch.isfinite(p).all() for p in self.teacher.parameters()):
            train_loss = math.nan          # the trainable stops a diverged trial
        return {"meta_loss": sum(objectives) / len(objectives), "train_loss": train_loss,
                "meta_steps": float(self.meta_step_count), "students": float(self.students),
                **self.last_test}

    # -- meta-test -----------------------------------------------------------------------------

    def heldout_tasks(self) -> list[StudentTask]:
        base = HELDOUT_SEED * (self.config["stream"].seed + 1)
        return [StudentTask(tuple(self.config["eval_hidden"]), self.config["student_activation"],
                            base + i) for i in range(self.config["eval_students"])]

    def horizons(self) -> list[int]:
        n = self.config["eval_steps"]
        return [n, 2 * n, 10 * n] if self.config["eval_long"] else [n, 2 * n]

    def start(self, task: StudentTask, data: Dataset, steps: int
              ) -> tuple[StudentNet, torch.Tensor, torch.Tensor]:
        """A held-out task's student, initial weights and batch indices (steps, B): the same for
        the teacher and every baseline."""
        student = student_for(task, data)
        generator = torch.Generator().manual_seed(task.seed)
        w0 = student.init(generator).to(self.device)
        batches = torch.randint(len(data.y_train), (steps, self.config["student_batch"]),
                                generator=generator).to(self.device)
        return student, w0, batches

    @torch.no_grad()
    def train_with_teacher(self, task: StudentTask, data: Dataset, horizons: list[int]
                           ) -> dict[int, tuple[float, float]]:
        """(loss, accuracy) at each horizon of a student trained by the teacher."""
        student, w0, batches = self.start(task, data, max(horizons))
        run, results = self.new_run(task, w0, data), {}
        for t in range(max(horizons)):
            idx = batches[t]
            _, _, run = self.advance(run, data.x_train[idx], data.y_train[idx], data)
            if t + 1 in horizons:
                loss, accuracy = score(student, run.w[None], data, self.config["eval_samples"])
                results[t + 1] = (loss.item(), accuracy.item())
        return results

    def baselines(self, task: StudentTask, data: Dataset, horizons: list[int]) -> dict:
        """Tuned SGD and Adam on a held-out task (cached: they do not depend on the teacher)."""
        key = (task, data.name, tuple(horizons), self.config["eval_samples"],
               self.config["student_batch"])
        if key not in self._baselines:
            student, w0, batches = self.start(task, data, max(horizons))
            self._baselines[key] = {
                name: tuned_baseline(student, w0, data, batches, name, horizons,
                                     self.config["eval_samples"]) for name in ("sgd", "adam")}
        return self._baselines[key]

    def compare(self, tasks: list[StudentTask], data: Dataset, horizons: list[int]) -> list[dict]:
        """Per task: {"teacher": {h: (loss, acc)}, "sgd"/"adam": {h: (loss, acc, lr)}}."""
        return [{"teacher": self.train_with_teacher(task, data, horizons),
                 **self.baselines(task, data, horizons)} for task in tasks]

    def meta_test(self) -> dict[str, float]:
        """The meta-test metrics on the held-out students (see the module docstring)."""
        horizons = self.horizons()
        results = self.compare(self.heldout_tasks(), self.eval_data, horizons)
        return summarize(results, horizons)

    def evaluate(self) -> Evaluation:
        """Test accuracy of each held-out student after N steps with the teacher."""
        n = self.config["eval_steps"]
        accuracies = [self.train_with_teacher(task, self.eval_data, [n])[n][1]
                      for task in self.heldout_tasks()]
        return Evaluation(accuracies, tasks_trained=0)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return copy.deepcopy({
            "teacher": self.teacher.state_dict(),
            "meta_opt": self.meta_opt.state_dict(),
            "generator": self.generator.get_state(),
            "run": self.run.to_state() if self.run is not None else None,
            "self_state": self.self_state,
            "meta_steps": self.meta_step_count,
            "students": self.students,
            "rounds": self.rounds,
            "last_test": dict(self.last_test),
        })

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.meta_opt.load_state_dict(state["meta_opt"])
        for group in self.meta_opt.param_groups:   # this config's rate wins (PBT mutates it)
            group["lr"] = self.config["meta_lr"]
        self.generator.set_state(state["generator"])
        run = state["run"]
        self.run = StudentRun.from_state(copy.deepcopy(run), self.device) if run else None
        self.self_state = copy.deepcopy(state["self_state"])
        self.meta_step_count = state["meta_steps"]
        self.students = state["students"]
        self.rounds = state["rounds"]
        self.last_test = dict(state["last_test"])

    def adapt(self, state: dict, old_config: dict) -> None:
        """Load a state made under other teacher widths (PBT mutating teacher_hidden). Widening is
        function-preserving (Net2Net through `lifelab.learners.growth`, for mlp and lstm: a new
        LSTM unit copies a unit's gate rows and recurrent state, and every reader of h, the
        recurrent matrix included, splits that unit's column among its copies); narrowing keeps
        the most important units. The meta-optimizer's moments of resized tensors start afresh."""
        old = checked_old_config(self, old_config)
        if len(old["teacher_hidden"]) != len(self.config["teacher_hidden"]):
            raise ConfigError(f"teacher cannot change the number of teacher layers "
                              f"({old['teacher_hidden']} -> {self.config['teacher_hidden']}): "
                              "give every teacher_hidden in a mutation ladder the same length")
        model = dict(state["teacher"])
        run = copy.deepcopy(state["run"])
        generator = torch.Generator().manual_seed(self.config["seed"])
        lstm = self.config["teacher_kind"] == "lstm"
        layers = len(self.config["teacher_hidden"])
        for k, new_width in enumerate(self.config["teacher_hidden"]):
            reader = f"body.{k + 1}.weight_ih" if lstm else f"body.{k + 1}.weight"
            reader = reader if k + 1 < layers else "head.weight"
            if lstm:
                umap = growth.resize_lstm_cell(model, f"body.{k}", {reader: 0}, new_width,
                                               generator)
                if run is not None:
                    for j in (2 * k, 2 * k + 1):      # this layer's (h, c) per student weight
                        run["teacher_state"][j] = umap.take(run["teacher_state"][j], 1)
            else:
                w_in, b_in = model[f"body.{k}.weight"], model[f"body.{k}.bias"]
                importance = growth.unit_importance(w_in, model[reader], b_in)
                umap = growth.resize_map(len(b_in), new_width, importance, generator)
                model[f"body.{k}.weight"] = umap.take(w_in)
                model[f"body.{k}.bias"] = umap.take(b_in)
                model[reader] = umap.spread(model[reader], 1)
        names = [name for name, _ in self.teacher.named_parameters()]
        meta_opt = dict(state["meta_opt"])
        meta_opt["state"] = {i: s for i, s in meta_opt["state"].items()
                             if model[names[i]].shape == state["teacher"][names[i]].shape}
        self.load_state_dict({**state, "teacher": model, "meta_opt": meta_opt, "run": run})


def summarize(results: list[dict], horizons: list[int]) -> dict[str, float]:
    """Meta-test metrics from `Teacher.compare` results: losses as geometric means over the
    students (so loss_ratio_adam = loss_teacher / loss_adam), accuracies as means."""
    def geomean(values: list[float]) -> float:
        if any(not math.isfinite(v) for v in values):
            return math.inf
        # float32 cross-entropy can round to exactly 0: floor it rather than take log(0)
        return math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values))

    def at(name: str, h: int, i: int) -> list[float]:
        return [r[name][h][i] for r in results]

    n = horizons[0]
    out = {}
    for name in ("teacher", "adam", "sgd"):
        out[f"loss_{name}"] = geomean(at(name, n, 0))
        out[f"acc_{name}"] = sum(at(name, n, 1)) / len(results)
    out["loss_ratio_adam"] = _ratio(out["loss_teacher"], out["loss_adam"])
    out["loss_ratio_sgd"] = _ratio(out["loss_teacher"], out["loss_sgd"])
    for h, label in zip(horizons[1:], ("2n", "10n"), strict=False):
        out[f"loss_ratio_adam_{label}"] = _ratio(geomean(at("teacher", h, 0)),
                                                 geomean(at("adam", h, 0)))
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) else math.inf


def _to_device(data: Dataset, device: torch.device) -> Dataset:
    if data.x_train.device == device:
        return data
    return dataclasses.replace(data, **{k: getattr(data, k).to(device)
                                        for k in ("x_train", "y_train", "x_test", "y_test")})
