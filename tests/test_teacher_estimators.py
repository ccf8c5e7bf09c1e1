"""Teacher meta-gradients: ES points along BPTT, every window's meta-gradient has unit norm,
the experimental self-application."""

import math

import torch
from test_teacher_students import TINY
from torch.nn import functional as F

from lifelab.learners.teacher import Teacher
from lifelab.learners.teacher.estimators import bptt, es, normalise_gradient


def test_es_estimate_points_along_the_bptt_meta_gradient():
    # seeds 0-5: cosine 0.47-0.68
    learner = Teacher({**TINY, "meta_gradient": "es", "es_pairs": 48, "es_sigma": 0.01})
    learner.run = learner.fresh_run()
    window = learner.window(learner.run, learner.draw_batches(4))
    bptt(window, learner.teacher, learner.generator, learner.config)
    exact = torch.cat([p.grad.flatten() for p in learner.teacher.parameters()])
    learner.meta_opt.zero_grad(set_to_none=True)
    es(window, learner.teacher, learner.generator, learner.config)
    estimate = torch.cat([p.grad.flatten() for p in learner.teacher.parameters()])
    assert F.cosine_similarity(exact, estimate, dim=0) > 0.3


def test_every_window_meta_gradient_counts_by_its_direction_alone():
    grads = [torch.full((3,), 1e-3), torch.full((2, 2), -2e-3)]
    normalise_gradient(grads)
    norm = torch.cat([g.flatten() for g in grads]).norm()
    assert math.isclose(norm.item(), 1.0, rel_tol=1e-6)
    assert math.isclose((grads[1][0, 0] / grads[0][0]).item(), -2.0, rel_tol=1e-6)
    zero = [torch.zeros(3)]
    normalise_gradient(zero)                  # nothing to scale: stays zero, no NaN
    assert not zero[0].any()
    # a meta-step scales the window's meta-gradient so before Adam sees it
    learner = Teacher(TINY)
    seen = []
    learner.meta_opt.step = lambda: seen.append(
        torch.cat([p.grad.flatten() for p in learner.teacher.parameters()]).norm().item())
    learner.meta_step()
    assert math.isclose(seen[0], 1.0, rel_tol=1e-5)


def test_experimental_self_application_updates_the_teacher_with_its_own_rule():
    learner = Teacher({**TINY, "meta_optimizer": "self", "meta_steps_per_round": 2})
    before = [p.detach().clone() for p in learner.teacher.parameters()]
    learner.step_round()
    assert learner.self_state["step"] == 2 and not learner.meta_opt.state   # Adam never ran
    moved = [p - b for p, b in zip(learner.teacher.parameters(), before, strict=True)]
    assert all(m.abs().max() > 0 for m in moved)
    # the teacher's own state is reset by a resize, and training goes on
    wider = Teacher({**TINY, "meta_optimizer": "self", "teacher_hidden": [12]})
    wider.adapt(learner.state_dict(), {**TINY, "meta_optimizer": "self"})
    assert math.isfinite(wider.step_round()["meta_loss"])
    assert wider.self_state["step"] == 4
