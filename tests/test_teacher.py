"""The teacher-network learner (learned optimizers): features, meta-gradients, meta-test against
tuned baselines, resume, function-preserving widening, config errors, preset and trainable."""

import math

import pytest
import torch
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners import teacher as tm
from lifelab.learners.teacher import StudentNet, StudentTask, Teacher
from lifelab.platform.data import load_dataset
from lifelab.searches.spec import load_spec, spec_from_dict

# tiny students on the 8x8 digits (64 inputs): every test here runs in a second or two
TINY = {"stream": {"dataset": "digits"}, "teacher_hidden": [8], "student_depth": [1, 1],
        "student_width": [8, 12], "student_batch": 32, "unroll_steps": 12, "truncation": 4,
        "meta_steps_per_round": 4, "meta_steps": 40, "eval_hidden": [16], "eval_students": 1,
        "eval_steps": 10, "eval_samples": 200}


def task_batch(data, n=32, seed=0):
    idx = torch.randint(len(data.y_train), (n,), generator=torch.Generator().manual_seed(seed))
    return data.x_train[idx], data.y_train[idx]


def test_digits_dataset_is_bundled_shuffled_and_split():
    data = load_dataset("digits")
    assert data.x_train.shape == (1400, 64) and data.x_test.shape == (397, 64)
    assert 0.0 <= data.x_train.min() and data.x_train.max() == 1.0
    assert data.num_classes == 10 and set(data.y_test.tolist()) == set(range(10))


@pytest.mark.parametrize("config, words", [
    ({"lr": 0.1}, ["'lr' is not a config key of learner 'teacher'", "meta_lr"]),
    ({"teacher_kind": "gru"}, ["'teacher_kind' 'gru' is unknown", "mlp, lstm"]),
    ({"features": "hessian"}, ["'features'", "gradient, gradient_free"]),
    ({"student_width": [50, 20]}, ["'student_width' must be [low, high] with low <= high"]),
    ({"student_depth": [2]}, ["'student_depth' must be [low, high]"]),
    ({"truncation": 50, "unroll_steps": 20}, ["'truncation' (50) must be <= unroll_steps (20)",
                                              "raise unroll_steps"]),
    ({"truncation": 1}, ["'truncation' must be >= 2"]),
    ({"meta_objective": "error"}, ["not differentiable", "meta_gradient: es"]),
    ({"meta_optimizer": "self", "features": "gradient_free"}, ["set features: gradient"]),
    ({"eval_dataset": "svhn"}, ["'eval_dataset' 'svhn' is unknown", "digits"]),
    ({"stream": {"dataset": "mnist5k", "tasks": 5}}, ["stream.tasks means nothing",
                                                      "remove it"]),
    ({"stream": {"dataset": "imagenet"}}, ["stream.dataset 'imagenet' is unknown"]),
])
def test_bad_config_is_one_line_naming_the_fix(config, words):
    with pytest.raises(ConfigError) as err:
        Teacher.validate_config(config)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_a_spec_with_a_task_stream_names_the_stream_key():
    with pytest.raises(ConfigError, match="stream.kind means nothing to learner 'teacher'"):
        spec_from_dict({"learner": "teacher", "stream": {"kind": "permuted"}})


def test_the_teacher_pbt_preset_is_valid():
    spec = load_spec("teacher-pbt")
    assert spec.learner == "teacher" and spec.search.scheduler == "pbt"
    assert spec.search.metric == "loss_ratio_adam" and spec.search.mode == "min"
    ladder = spec.search.mutations["teacher_hidden"]
    assert len(ladder) >= 3 and len({len(rung) for rung in ladder}) == 1


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


def test_gradient_free_output_features_hold_the_delta_rule():
    # E[(softmax - target) pre] at the output layer is the loss gradient there: the local signal
    # a gradient-free teacher can learn to use (the delta rule), with nothing backpropagated
    data = load_dataset("digits")
    student = StudentNet(64, (10,), 10, "tanh")
    w = student.init(torch.Generator().manual_seed(1)).requires_grad_()
    x, y = task_batch(data)
    logits, activity = student.forward(w[None], x, trace=True)
    grad = torch.autograd.grad(F.cross_entropy(logits[0], y), w)[0]
    feedback = tm.feedback_matrices(StudentTask((10,), "tanh", 1), 10)
    local = tm.activity_features(student, w, activity, y, 10, feedback)
    names = tm.FEATURE_SETS["gradient_free"].names
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


@pytest.mark.parametrize("features, accuracy", [("gradient", 0.8), ("gradient_free", 0.7)])
def test_bptt_meta_training_makes_the_teacher_train_held_out_students_better(features,
                                                                             accuracy):
    learner = Teacher({**TINY, "features": features, "teacher_hidden": [16], "meta_lr": 3e-2,
                       "step_size": 0.03, "student_batch": 64, "unroll_steps": 30,
                       "truncation": 10, "meta_steps": 60, "meta_steps_per_round": 20,
                       "eval_steps": 30, "eval_every": 10})
    before = learner.meta_test()
    while not learner.done:
        metrics = learner.step_round()
    after = learner.meta_test()
    assert metrics["meta_steps"] == 60 and metrics["students"] == 60 * 10 / 30
    assert after["loss_teacher"] < 0.3 * before["loss_teacher"]
    assert after["acc_teacher"] > accuracy                # chance is 0.1
    assert learner.evaluate().accuracies == [after["acc_teacher"]]   # one held-out student
    assert after["loss_ratio_adam"] == pytest.approx(after["loss_teacher"] / after["loss_adam"])
    assert learner.rows == [] and set(learner.metrics) >= set(metrics)


def test_es_estimate_points_along_the_bptt_meta_gradient():
    learner = Teacher({**TINY, "meta_gradient": "es", "es_pairs": 48, "es_sigma": 0.01})
    learner.run = learner.fresh_run()
    batches = learner.draw_batches(4)
    objective, _, _ = learner.window(learner.run, batches)
    objective.backward()
    exact = torch.cat([p.grad.flatten() for p in learner.teacher.parameters()])
    learner.meta_opt.zero_grad(set_to_none=True)
    learner.es_step(batches)
    estimate = torch.cat([p.grad.flatten() for p in learner.teacher.parameters()])
    assert F.cosine_similarity(exact, estimate, dim=0) > 0.3


def test_tuned_baselines_train_each_rate_as_if_alone_and_keep_the_best():
    data = load_dataset("digits")
    student = StudentNet(64, (16,), 10, "sigmoid")
    generator = torch.Generator().manual_seed(3)
    w0 = student.init(generator)
    batches = torch.randint(len(data.y_train), (20, 32), generator=generator)
    best = tm.tuned_baseline(student, w0, data, batches, "adam", [10, 20], 200)
    for horizon, (loss, _, lr) in best.items():
        alone = w0.clone().requires_grad_()
        opt = torch.optim.Adam([alone], lr=lr)
        for t in range(horizon):
            student.loss(alone[None], data.x_train[batches[t]], data.y_train[batches[t]]).sum() \
                .backward()
            opt.step()
            opt.zero_grad()
        assert tm.score(student, alone.detach()[None], data, 200)[0].item() == \
            pytest.approx(loss, rel=1e-5)
        # and no other rate of the grid does better at this horizon
        others = []
        for other in tm.ADAM_GRID:
            w = w0.clone().requires_grad_()
            opt = torch.optim.Adam([w], lr=other)
            for t in range(horizon):
                student.loss(w[None], data.x_train[batches[t]], data.y_train[batches[t]]) \
                    .sum().backward()
                opt.step()
                opt.zero_grad()
            others.append(tm.score(student, w.detach()[None], data, 200)[0].item())
        assert loss <= min(others) + 1e-5


@pytest.mark.parametrize("variant", [
    {},
    {"teacher_kind": "lstm", "features": "gradient_free"},
    {"meta_gradient": "es", "es_pairs": 2, "meta_objective": "error"},
    {"meta_optimizer": "self"},
])
def test_resume_is_bit_for_bit(variant):
    # 4 meta-steps per round over unrolls of 3 windows: round 2 starts mid-student
    config = {**TINY, **variant, "meta_steps_per_round": 2, "truncation": 4, "unroll_steps": 12,
              "eval_every": 2}
    learner = Teacher(config)
    learner.step_round()
    saved = learner.state_dict()
    assert saved["run"]["step"] == 8
    expected = learner.step_round()
    resumed = Teacher(config)
    resumed.load_state_dict(saved)
    assert resumed.step_round() == expected
    for a, b in zip(learner.teacher.parameters(), resumed.teacher.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(learner.run.w, resumed.run.w)


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


def test_adapt_refuses_what_it_cannot_carry_over():
    learner = Teacher(TINY)
    learner.step_round()
    state = learner.state_dict()
    other = Teacher({**TINY, "features": "gradient_free"})
    with pytest.raises(ConfigError, match="across features 'gradient' -> 'gradient_free'"):
        other.adapt(state, TINY)
    deeper = Teacher({**TINY, "teacher_hidden": [8, 8]})
    with pytest.raises(ConfigError, match="number of teacher layers"):
        deeper.adapt(state, TINY)


def test_meta_test_tasks_are_held_out_and_shared_across_trials():
    a, b = Teacher({**TINY, "seed": 1}), Teacher({**TINY, "seed": 2})
    assert a.heldout_tasks() == b.heldout_tasks() == [StudentTask((16,), "sigmoid",
                                                                  tm.HELDOUT_SEED)]
    shifted = Teacher({**TINY, "stream": {"dataset": "digits", "seed": 1}})
    assert shifted.heldout_tasks() != a.heldout_tasks()
    # a meta-test does not touch the meta-training random stream
    state = a.generator.get_state()
    a.meta_test()
    assert torch.equal(a.generator.get_state(), state)


@pytest.fixture
def one_thread_after():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)          # the trainable sets it from its CPU resources


def test_trainable_drives_the_teacher_and_adapts_a_wider_checkpoint(ray_session, tmp_path,
                                                                     one_thread_after):
    from lifelab.trainables.trainable import LearnerTrainable

    config = {"learner": "teacher", **TINY, "meta_steps": 8}
    trainable = LearnerTrainable(config=config)
    result = trainable.train()
    assert "acc_rows" not in result and math.isfinite(result["loss_ratio_adam"])
    assert not result["done"]
    trainable.save_checkpoint(str(tmp_path))
    wider = LearnerTrainable(config={**config, "teacher_hidden": [12]})
    wider.load_checkpoint(str(tmp_path))             # -> learner.adapt(state, old_config)
    assert wider.learner.teacher.body[0].out_features == 12
    assert wider.learner.meta_step_count == 4
    assert wider.train()["done"]
