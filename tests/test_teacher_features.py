"""Teacher features: the gradient-free columns hold the delta rule and feedback alignment,
per-tensor scaling and centring, the weight column's graph."""

import math

import torch
from test_teacher_students import TINY, task_batch
from torch.nn import functional as F

from lifelab.learners.teacher import Teacher
from lifelab.learners.teacher.features import (
    FEATURE_SETS,
    activity_features,
    feedback_matrices,
)
from lifelab.learners.teacher.students import StudentNet, StudentTask, as_rows
from lifelab.platform.data import load_dataset


def test_gradient_free_output_features_hold_the_delta_rule():
    # E[(softmax - target) pre] at the output layer is the loss gradient there: the local signal
    # a gradient-free teacher can learn to use (the delta rule), with nothing backpropagated
    data = as_rows(load_dataset("digits"))   # students train on float rows
    student = StudentNet(64, (10,), 10, "tanh")
    w = student.init(torch.Generator().manual_seed(1)).requires_grad_()
    x, y = task_batch(data)
    logits, activity = student.forward(w[None], x, trace=True)
    grad = torch.autograd.grad(F.cross_entropy(logits[0], y), w)[0]
    feedback = feedback_matrices(StudentTask((10,), "tanh", 1), 10)
    local = activity_features(student, w, activity, y, 10, feedback)
    names = FEATURE_SETS["gradient_free"].names
    column = dict(zip(names[:9], local.unbind(1), strict=True))
    output = column["is_output"] == 1
    assert output.sum() == 10 * 11 and not output[:10 * 65].any()
    assert torch.allclose(column["output_hebb_error"][output], grad[output], atol=1e-6)
    assert (column["output_hebb_error"][~output] == 0).all()
    # a hidden unit's error is the output error through the fixed random feedback, times the
    # unit's own derivative (direct feedback alignment): not the backpropagated gradient
    hidden_in, hidden_out = activity[0][0][0], activity[0][1][0]
    error = activity[1][1][0] - F.one_hot(y, 10)
    unit_error = (error @ feedback[0].t()) * (1 - hidden_out ** 2)
    expected = unit_error.t() @ F.pad(hidden_in, (0, 1), value=1.0) / len(y)
    assert torch.allclose(column["hidden_hebb_error"][~output], expected.flatten(), atol=1e-6)
    assert not torch.allclose(expected.flatten(), grad[~output], atol=1e-3)


def test_features_are_scaled_per_tensor_so_any_weight_scale_looks_alike():
    learner = Teacher(TINY)
    student = StudentNet(64, (12,), 10, "sigmoid")
    raw = torch.randn(student.num_weights, 7)
    scale = torch.zeros(2, learner.feature_set.num_groups)
    first, _ = learner.normalise(raw, scale, 0, student)
    # the second tensor's grouped columns multiplied by 1000: the same features come out
    boosted = raw.clone()
    second_tensor = student.tensor_index == 1
    boosted[second_tensor, :5] *= 1000
    again, _ = learner.normalise(boosted, scale, 0, student)
    assert torch.allclose(again, first, rtol=1e-4, atol=1e-6)
    # ungrouped columns (Adam-like direction, step) pass through unchanged
    assert torch.equal(first[:, 5:], raw[:, 5:])
    # at step 0 each tensor's grouped momentum columns have mean square 1 together
    momenta = first[second_tensor][:, 1:5]
    assert math.isclose(momenta.square().mean().item(), 1.0, rel_tol=1e-4)


def test_positive_activities_are_centred_per_tensor():
    # uncentred, a teacher's response to (positive) activities moves all of a layer's weights
    # the same way; centred, each tensor's pre / post / hebb columns average to zero
    learner = Teacher({**TINY, "features": "gradient_free"})
    student = StudentNet(64, (12,), 10, "sigmoid")
    names = learner.feature_set.names
    raw = torch.rand(student.num_weights, len(names)) + 5.0
    features, _ = learner.normalise(raw, torch.zeros(2, learner.feature_set.num_groups), 0,
                                   student)
    for k in range(2):
        rows = features[student.tensor_index == k]
        for name in names:
            mean = rows[:, names.index(name)].mean().item()
            if name in ("pre", "post", "hebb"):
                assert abs(mean) < 1e-4
            else:
                assert mean > 0.5


def test_the_weight_column_keeps_its_graph_and_its_values():
    # the meta-gradient sees the loop weight -> teacher -> update -> weight through the weight
    # column only; the features' values are those of the detached column
    learner = Teacher(TINY)
    student = StudentNet(64, (12,), 10, "sigmoid")
    w = student.init(torch.Generator().manual_seed(0)).requires_grad_()
    raw = torch.cat([w.detach()[:, None], torch.randn(student.num_weights, 6)], 1)
    scale = torch.zeros(2, learner.feature_set.num_groups)
    plain, _ = learner.normalise(raw, scale, 0, student)
    attached, _ = learner.normalise(raw, scale, 0, student, w)
    assert torch.equal(attached, plain) and not plain.requires_grad
    (through_weight,) = torch.autograd.grad(attached[:, 0].sum(), w, retain_graph=True)
    (through_others,) = torch.autograd.grad(attached[:, 1:].sum(), w)
    assert (through_weight > 0).all() and not through_others.any()
