"""The teacher network: its first steps are small, the update direction has no common part per
tensor, widening preserves its outputs (mlp and lstm) and narrowing goes on training."""

import math

import pytest
import torch
from test_teacher_students import TINY, task_batch

from lifelab.learners.teacher import Teacher
from lifelab.learners.teacher.network import weight_update
from lifelab.learners.teacher.students import StudentNet


def test_one_teacher_step_updates_all_weights_as_one_batch_and_starts_small():
    learner = Teacher(TINY)
    data = learner.data
    run = learner.fresh_run()
    x, y = task_batch(data)
    with torch.no_grad():
        loss, _, after = learner.advance(run, x, y, data)
    delta = after.w - run.w
    assert delta.shape == run.w.shape and (delta != 0).all()
    # a fresh teacher's steps are small against the weights themselves
    assert delta.abs().max() < 0.1 * learner.config["step_size"] * math.e ** 4
    assert delta.abs().mean() < 0.05 * run.w.abs().mean()
    assert loss.item() > 0 and after.step == 1 and after.loss0 == loss


def test_the_update_direction_has_no_common_part_per_tensor():
    # a direction shared by a whole layer (here: the same output on every row) moves nothing
    student = StudentNet(64, (12,), 10, "sigmoid")
    out = torch.randn(student.num_weights, 2)
    same = torch.stack([torch.full((student.num_weights,), 3.0), out[:, 1]], 1)
    assert not weight_update(same, student, 0.01, torch.device("cpu")).any()
    update = weight_update(out, student, 0.01, torch.device("cpu"))
    direction = update / (4 * torch.tanh(out[:, 1] / 4)).exp() / 0.01
    for k in range(2):
        assert abs(direction[student.tensor_index == k].mean()) < 1e-5


def teacher_outputs(learner):
    run = learner.run
    features = torch.randn(len(run.w), len(learner.feature_set.names),
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, state = learner.teacher(features, run.teacher_state)
    return out, state


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_widening_the_teacher_preserves_its_outputs(kind):
    config = {**TINY, "teacher_kind": kind, "teacher_hidden": [6, 5], "meta_steps_per_round": 2}
    narrow = Teacher(config)
    narrow.step_round()                       # mid-student: an LSTM carries per-weight state
    out, state = teacher_outputs(narrow)
    wide = Teacher({**config, "teacher_hidden": [9, 11]})
    wide.adapt(narrow.state_dict(), config)
    assert [layer.weight.shape[0] if kind == "mlp" else layer.hidden_size
            for layer in wide.teacher.body] == [9, 11]
    wide_out, wide_state = teacher_outputs(wide)
    assert torch.allclose(wide_out, out, atol=1e-5, rtol=0)
    if kind == "lstm":                        # the new units' states are copies of old ones
        assert wide_state[2].shape[1] == 11 and torch.allclose(wide_state[2][:, :5], state[2])
    # the next student step is (nearly) the one the narrow teacher would take
    x, y = task_batch(narrow.data)
    with torch.no_grad():
        _, _, a = narrow.advance(narrow.run, x, y, narrow.data)
        _, _, b = wide.advance(wide.run, x, y, wide.data)
    assert torch.allclose(a.w, b.w, atol=1e-6, rtol=0)
    # narrowing keeps the most important units and goes on training
    small = Teacher({**config, "teacher_hidden": [3, 3]})
    small.adapt(wide.state_dict(), {**config, "teacher_hidden": [9, 11]})
    assert math.isfinite(small.step_round()["meta_loss"])
