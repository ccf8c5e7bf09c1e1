"""Meta-training: how a window of student steps becomes a change of the teacher.

Draw a student, unroll `unroll_steps` steps with the teacher, cut into windows of `truncation`
steps; each window is one meta-step. Meta-objective of a window (`objective_term`): the mean over
its steps of log(loss_t / loss_0) (capped at 2, a 7x blow-up; normalised across tasks by loss_0),
or with `meta_objective: error` the mean batch error (not differentiable: needs es).

The estimators share one signature, (window, teacher, generator, config) -> (objective, losses,
run after the window), and leave the meta-gradient in the teacher's `.grad`:
  bptt  truncated backpropagation through the window (features are inputs, not differentiated,
        except the weight column: the first-order approximation of Andrychowicz et al. 2016)
  es    antithetic evolution strategies, `es_pairs` pairs of perturbations of std `es_sigma`
        evaluated on the same window from the same student state; then the window is run with
        the current teacher
The learner scales the window's meta-gradient to unit norm (`normalise_gradient`) and applies it
with Adam at `meta_lr`, or, EXPERIMENTAL (`meta_optimizer: self`, gradient features only), with
`self_application`: the teacher reads its own parameters and their meta-gradients as it reads a
student's weights and writes their update (its own feature state restarts when adapt resizes
it). A window whose meta-gradient is not finite is skipped and a fresh student drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lifelab.learners.teacher.features import (
    MOMENTUM_DECAYS,
    FeatureNormaliser,
    ParamLayout,
    gradient_features,
)
from lifelab.learners.teacher.network import TeacherNet, weight_update
from lifelab.learners.teacher.students import StudentRun

META_LOSS_CAP = 2.0               # log(loss_t / loss_0) counts at most this (a 7x blow-up)

Batches = list[tuple[torch.Tensor, torch.Tensor]]
# one student step: (run, x, y, teacher parameters or None) -> (loss, batch accuracy, run after)
Step = Callable[[StudentRun, torch.Tensor, torch.Tensor, dict | None],
                tuple[torch.Tensor, torch.Tensor, StudentRun]]
WindowResult = tuple[torch.Tensor, list[torch.Tensor], StudentRun]


def objective_term(kind: str, loss: torch.Tensor, accuracy: torch.Tensor,
                   loss0: torch.Tensor) -> torch.Tensor:
    """One step's meta-objective: log(loss / loss0), capped, or (kind `error`) the batch error."""
    if kind == "error":
        return 1 - accuracy
    return (loss / loss0).log().clamp(max=META_LOSS_CAP)


@dataclass
class Window:
    """A student run and the batches of its next `truncation` steps."""
    step: Step
    run: StudentRun
    batches: Batches
    objective: str

    def __call__(self, params: dict[str, torch.Tensor] | None = None) -> WindowResult:
        """Train the run over the batches (`params` replace the teacher's): (mean
        meta-objective, the losses, the run after)."""
        run, terms, losses = self.run, [], []
        for x, y in self.batches:
            loss, accuracy, run = self.step(run, x, y, params)
            # the student's first loss is its own reference: loss0 is set by that step
            terms.append(objective_term(self.objective, loss, accuracy, run.loss0))
            losses.append(loss.detach())
        return torch.stack(terms).mean(), losses, run


def bptt(window: Window, teacher: nn.Module, generator: torch.Generator,
         config: dict) -> WindowResult:
    """Truncated backpropagation through the window."""
    objective, losses, run = window()
    if objective.requires_grad:
        objective.backward()
    return objective, losses, run


def es(window: Window, teacher: nn.Module, generator: torch.Generator,
       config: dict) -> WindowResult:
    """Antithetic ES estimate of the window's meta-gradient (same student state and batches for
    every perturbation), then the window with the current teacher."""
    sigma, pairs = config["es_sigma"], config["es_pairs"]
    params = dict(teacher.named_parameters())
    with torch.no_grad():
        grads = {name: torch.zeros_like(p) for name, p in params.items()}
        for _ in range(pairs):
            noise = {name: torch.randn(p.shape, generator=generator).to(p)
                     for name, p in params.items()}
            plus, _, _ = window({n: p + sigma * noise[n] for n, p in params.items()})
            minus, _, _ = window({n: p - sigma * noise[n] for n, p in params.items()})
            for name in grads:
                grads[name] += (plus - minus) / (2 * sigma * pairs) * noise[name]
        for name, p in params.items():
            p.grad = grads[name]
        return window()


Estimator = Callable[[Window, nn.Module, torch.Generator, dict], WindowResult]
ESTIMATORS: dict[str, Estimator] = {"bptt": bptt, "es": es}


def normalise_gradient(grads: list[torch.Tensor]) -> None:
    """Scale a window's meta-gradient to unit norm, in place. Window meta-gradients span over
    three orders of magnitude (a student's first vs later windows, a plateau vs a blow-up);
    with their raw norms (only clipped above), Adam's second moment, remembering the largest,
    left steps of ~10% of meta_lr on the plateau where a student's output is uniform, and a
    teacher stayed there for 60+ meta-steps."""
    if not grads:
        return
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if norm > 0:
        for g in grads:
            g.div_(norm)


@torch.no_grad()
def self_application(teacher: TeacherNet, state: dict | None, normalise: FeatureNormaliser,
                     config: dict, device: torch.device) -> dict:
    """EXPERIMENTAL: the teacher updates its own parameters from their meta-gradients in
    `.grad`, reading them as gradient features like any student's (one tensor per parameter for
    the feature scales; the step count runs over meta_steps). Returns its new own state; `state`
    None or of another size (resized by adapt) starts afresh."""
    params = list(teacher.parameters())
    w = nn.utils.parameters_to_vector(params)
    grad = torch.cat([(torch.zeros_like(q) if q.grad is None else q.grad).flatten()
                      for q in params])
    layout = ParamLayout.of(params)
    if state is None or len(state["moments"]) != len(w):
        state = {"moments": torch.zeros(len(w), len(MOMENTUM_DECAYS), device=device),
                 "second": torch.zeros_like(w), "step": 0,
                 "scale": torch.zeros(len(params), normalise.num_groups, device=device),
                 "teacher_state": teacher.initial_state(len(w), device)}
    raw, moments, second = gradient_features(w, grad, state["moments"], state["second"],
                                             state["step"], config["meta_steps"])
    features, scale = normalise(raw, state["scale"], state["step"], layout)
    out, teacher_state = teacher(features, state["teacher_state"])
    nn.utils.vector_to_parameters(w + weight_update(out, layout, config["step_size"], device),
                                  params)
    return {"moments": moments, "second": second, "step": state["step"] + 1, "scale": scale,
            "teacher_state": teacher_state}
