"""Teacher students: the bundled digits as float rows, students run functionally on flat
weights. TINY and task_batch serve every tests/test_teacher_*.py module."""

import torch

from lifelab.learners.teacher.students import StudentNet, as_rows
from lifelab.platform.data import load_dataset

# tiny students on the 8x8 digits (64 inputs): every test here runs in a second or two
TINY = {"stream": {"dataset": "digits"}, "teacher_hidden": [8], "student_depth": [1, 1],
        "student_width": [8, 12], "student_batch": 32, "unroll_steps": 12, "truncation": 4,
        "meta_steps_per_round": 4, "meta_steps": 40, "eval_hidden": [16], "eval_students": 1,
        "eval_steps": 10, "eval_samples": 200}


def task_batch(data, n=32, seed=0):
    idx = torch.randint(len(data.y_train), (n,), generator=torch.Generator().manual_seed(seed))
    return data.x_train[idx], data.y_train[idx]


def test_digits_dataset_is_bundled_shuffled_and_split():
    data = as_rows(load_dataset("digits"))   # students train on float rows
    assert data.x_train.shape == (1400, 64) and data.x_test.shape == (397, 64)
    assert 0.0 <= data.x_train.min() and data.x_train.max() == 1.0
    assert data.num_classes == 10 and set(data.y_test.tolist()) == set(range(10))


def test_images_of_any_shape_reach_students_as_float_rows():
    rows = as_rows(load_dataset("mnist5k"))
    assert rows.x_train.shape == (4000, 784) and rows.x_train.dtype == torch.float32
    assert 0.0 <= rows.x_train.min() and rows.x_train.max() <= 1.0
    assert as_rows(rows) is rows                  # float rows pass through, no copy


def test_student_runs_functionally_with_the_bias_as_an_ordinary_weight():
    student = StudentNet(5, (4,), 3, "sigmoid")
    w = student.init(torch.Generator().manual_seed(0))
    assert student.shapes == [(4, 6), (3, 5)] and w.shape == (4 * 6 + 3 * 5,)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 3))
    first, second = student.layers(w[None])
    with torch.no_grad():
        net[0].weight.copy_(first[0, :, :-1])
        net[0].bias.copy_(first[0, :, -1])
        net[2].weight.copy_(second[0, :, :-1])
        net[2].bias.copy_(second[0, :, -1])
    x = torch.randn(7, 5)
    logits, _ = student.forward(torch.stack([w, 2 * w]), x)
    assert torch.allclose(logits[0], net(x), atol=1e-6)
    assert not torch.allclose(logits[1], logits[0])          # each row is its own student
