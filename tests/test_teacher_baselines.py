"""The teacher's meta-test: tuned baselines train each rate as if alone and keep the best;
held-out students are shared across trials and leave the meta-training stream alone."""

import pytest
import torch
from test_teacher_students import TINY

from lifelab.learners.teacher import Teacher
from lifelab.learners.teacher.baselines import ADAM_GRID, HELDOUT_SEED, tuned_baseline
from lifelab.learners.teacher.students import StudentNet, StudentTask, as_rows, score
from lifelab.platform.data import load_dataset


def test_tuned_baselines_train_each_rate_as_if_alone_and_keep_the_best():
    data = as_rows(load_dataset("digits"))   # students train on float rows
    student = StudentNet(64, (16,), 10, "sigmoid")
    generator = torch.Generator().manual_seed(3)
    w0 = student.init(generator)
    batches = torch.randint(len(data.y_train), (20, 32), generator=generator)
    best = tuned_baseline(student, w0, data, batches, "adam", [10, 20], 200)
    for horizon, (loss, _, lr) in best.items():
        alone = w0.clone().requires_grad_()
        opt = torch.optim.Adam([alone], lr=lr)
        for t in range(horizon):
            student.loss(alone[None], data.x_train[batches[t]], data.y_train[batches[t]]).sum() \
                .backward()
            opt.step()
            opt.zero_grad()
        assert score(student, alone.detach()[None], data, 200)[0].item() == \
            pytest.approx(loss, rel=1e-5)
        # and no other rate of the grid does better at this horizon
        others = []
        for other in ADAM_GRID:
            w = w0.clone().requires_grad_()
            opt = torch.optim.Adam([w], lr=other)
            for t in range(horizon):
                student.loss(w[None], data.x_train[batches[t]], data.y_train[batches[t]]) \
                    .sum().backward()
                opt.step()
                opt.zero_grad()
            others.append(score(student, w.detach()[None], data, 200)[0].item())
        assert loss <= min(others) + 1e-5


def test_meta_test_tasks_are_held_out_and_shared_across_trials():
    a, b = Teacher({**TINY, "seed": 1}), Teacher({**TINY, "seed": 2})
    assert a.heldout_tasks() == b.heldout_tasks() == [StudentTask((16,), "sigmoid",
                                                                  HELDOUT_SEED)]
    shifted = Teacher({**TINY, "stream": {"dataset": "digits", "seed": 1}})
    assert shifted.heldout_tasks() != a.heldout_tasks()
    # a meta-test does not touch the meta-training random stream
    state = a.generator.get_state()
    a.meta_test()
    assert torch.equal(a.generator.get_state(), state)
