"""The meta-test: held-out students trained by the teacher and by tuned SGD and Adam.

Every `eval_every` rounds and at the end, held-out students of architecture `eval_hidden` on
`eval_dataset` (default: the meta-training dataset), drawn from `stream.seed` so every trial of a
sweep meets the same ones (`heldout_tasks`), come in two disjoint sets: `val_students`
validation students (what searches select on, metrics `val_<name>`) and `eval_students` test
students (reported, never used for a decision). Their seeds never meet: test seeds count up from
HELDOUT_SEED * (stream.seed + 1), validation seeds down from the one below it, and the learner
redraws a meta-training student that would get either (`Teacher.sample_task`). A fraction
`stream.validation` of each class's training images is held out (`validation_split`): no student
trains on them, and validation students are scored on them where test students are scored on
the test split. Each held-out student is trained N = `eval_steps` steps
(and 2N, and 10N with `eval_long`) by the teacher and by SGD and Adam whose learning rates are
tuned per student and per horizon on a grid (ADAM_GRID, SGD_GRID: the best final loss wins; all
grid rates train as one batch, `tuned_baseline`). Every optimizer sees the same initial weights
and batches (`start`). Loss: cross-entropy on the first `eval_samples` training images (the
objective being optimized); accuracy: on the test split (test students) or the held-out
validation images (validation students). The baselines do not depend on
the teacher: the learner computes them once and keeps them in memory.

Scores (`summarize`): losses are geometric means over the held-out students (so
loss_ratio_adam = loss_teacher / loss_adam), accuracies arithmetic means.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from lifelab.learners.teacher.students import StudentNet, StudentTask, score, student_for
from lifelab.platform.data import Dataset
from lifelab.platform.streams import hold_out

ADAM_GRID = tuple(10 ** (e / 2) for e in range(-8, -1))   # 1e-4 .. 1e-1, half decades
SGD_GRID = tuple(10 ** (e / 2) for e in range(-4, 3))     # 1e-2 .. 10
HELDOUT_SEED = 10_000_019         # test student seeds: HELDOUT_SEED * (stream.seed + 1) + i
SPLITS = ("val", "test")


def heldout_tasks(config: dict, split: str = "test") -> list[StudentTask]:
    """The meta-test's test (or validation) students: the same for every trial with this
    `stream.seed`; test seeds count up from the base, validation seeds down from below it."""
    base = HELDOUT_SEED * (config["stream"].seed + 1)
    seeds = ([base + i for i in range(config["eval_students"])] if split == "test" else
             [base - 1 - j for j in range(config["val_students"])])
    return [StudentTask(tuple(config["eval_hidden"]), config["student_activation"], seed)
            for seed in seeds]


def validation_split(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(the images students train on, the validation students' data): `fraction` of each
    class's training images, drawn with `seed`, are held out; the first keeps the test split,
    the second trains on the same images and is scored on the held-out ones (its test split).
    With fraction 0: (data, None), no validation students."""
    if fraction == 0:
        return data, None
    x, y, x_val, y_val = hold_out(data.x_train, data.y_train, fraction, seed)
    train = dataclasses.replace(data, x_train=x, y_train=y)
    return train, dataclasses.replace(train, x_test=x_val, y_test=y_val)


def horizons(config: dict) -> list[int]:
    n = config["eval_steps"]
    return [n, 2 * n, 10 * n] if config["eval_long"] else [n, 2 * n]


def start(task: StudentTask, data: Dataset, steps: int, batch: int, device: torch.device
          ) -> tuple[StudentNet, torch.Tensor, torch.Tensor]:
    """A held-out task's student, initial weights and batch indices (steps, batch): the same for
    the teacher and every baseline."""
    student = student_for(task, data)
    generator = torch.Generator().manual_seed(task.seed)
    w0 = student.init(generator).to(device)
    batches = torch.randint(len(data.y_train), (steps, batch), generator=generator).to(device)
    return student, w0, batches


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
