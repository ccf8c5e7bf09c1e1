"""Credit-assignment learners: each rule's update on a tiny network against a hand-derived one,
growing (stall -> growth, function unchanged, training goes on), wiring cost, bit-for-bit resume,
config errors, presets."""

import pytest
import torch
from outcomes import mean, over_seeds, shown
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners import credit, credit_local
from lifelab.learners.base import Learner
from lifelab.platform.data import load_dataset
from lifelab.searches.spec import load_spec
from lifelab.trainables.registry import learner_class

RULES = {"backprop": credit.Backprop, "feedback_alignment": credit.FeedbackAlignment,
         "dfa": credit.DFA, "synthetic_gradients": credit_local.SyntheticGradients,
         "forward_forward": credit_local.ForwardForward, "target_prop": credit_local.TargetProp}
PLAIN = {"kind": "permuted", "tasks": 1, "scenario": "task", "steps_per_task": 30}
TINY = {"hidden": [5, 4], "batch_size": 8}


def make(cls, stream=None, **config):
    return cls({"stream": {**PLAIN, **(stream or {})}, **TINY, **config},
               data=load_dataset("mnist5k"))


def batch(learner, n=8):
    x, y = learner.sample(0, n)
    return x, y, learner.stream.output_units(0, 1)


def rule_grads(learner, x, y, units):
    """Gradients the rule's backward leaves for one batch (as the loop computes them)."""
    learner.batch_total = len(y)
    learner.model.zero_grad(set_to_none=True)
    (learner.rule_loss(x, y, units) / len(y)).backward()
    return [(layer.weight.grad.clone(), layer.bias.grad.clone()) for layer in learner.model.layers]


def forward_parts(learner, x):
    """Pre-activations a_l and activations h_l of the plain forward pass (h_0 = x)."""
    hs, pre = [x], []
    for layer in learner.model.layers[:-1]:
        pre.append(layer(hs[-1]))
        hs.append(torch.relu(pre[-1]))
    return pre, hs


def output_error(learner, out, y, units):
    """dL/d(out) of the batch-mean cross-entropy over the task's units (zeros elsewhere)."""
    e = torch.zeros_like(out)
    e[:, units] = (F.softmax(out[:, units], 1) - F.one_hot(y, units.stop - units.start)) / len(y)
    return e


def test_registry_names_every_rule():
    for name, cls in RULES.items():
        assert learner_class(name) is cls and cls.name == name
        assert isinstance(make(cls), Learner)


def test_backprop_hidden_update_sends_the_error_down_through_the_weights():
    learner = make(credit.Backprop)
    x, y, units = batch(learner)
    grads = rule_grads(learner, x, y, units)
    with torch.no_grad():
        w = [layer.weight for layer in learner.model.layers]
        pre, hs = forward_parts(learner, x)
        e = output_error(learner, learner.model(x), y, units)
        d2 = (e @ w[2]) * (pre[1] > 0)
        d1 = (d2 @ w[1]) * (pre[0] > 0)
    assert torch.allclose(grads[2][0], e.t() @ hs[2], atol=1e-7)
    assert torch.allclose(grads[1][0], d2.t() @ hs[1], atol=1e-7)
    assert torch.allclose(grads[0][0], d1.t() @ x, atol=1e-7)


def test_feedback_alignment_uses_the_fixed_matrices_not_the_transposed_weights():
    learner = make(credit.FeedbackAlignment)
    x, y, units = batch(learner)
    b = [t.detach().clone() for t in learner.model.fixed]
    assert [t.shape for t in b] == [layer.weight.shape for layer in learner.model.layers]
    grads = rule_grads(learner, x, y, units)
    with torch.no_grad():
        pre, hs = forward_parts(learner, x)
        e = output_error(learner, learner.model(x), y, units)
        d2 = (e @ b[2]) * (pre[1] > 0)
        d1 = (d2 @ b[1]) * (pre[0] > 0)
        true_d2 = (e @ learner.model.layers[2].weight) * (pre[1] > 0)
    assert torch.allclose(grads[2][0], e.t() @ hs[2], atol=1e-7)   # the top layer is exact
    assert torch.allclose(grads[1][0], d2.t() @ hs[1], atol=1e-7)
    assert torch.allclose(grads[0][0], d1.t() @ x, atol=1e-7)
    assert torch.allclose(grads[1][1], d2.sum(0), atol=1e-7)
    assert not torch.allclose(grads[1][0], true_d2.t() @ hs[1], atol=1e-4)
    assert all(not t.requires_grad for t in learner.model.fixed)


def test_dfa_projects_the_output_error_straight_to_each_hidden_layer():
    learner = make(credit.DFA)
    x, y, units = batch(learner)
    b = [t.detach().clone() for t in learner.model.fixed]
    assert [tuple(t.shape) for t in b] == [(10, 5), (10, 4)]
    grads = rule_grads(learner, x, y, units)
    with torch.no_grad():
        pre, hs = forward_parts(learner, x)
        e = output_error(learner, learner.model(x), y, units)
        d1 = (e @ b[0]) * (pre[0] > 0)
        d2 = (e @ b[1]) * (pre[1] > 0)
    assert torch.allclose(grads[2][0], e.t() @ hs[2], atol=1e-7)
    assert torch.allclose(grads[1][0], d2.t() @ hs[1], atol=1e-7)
    assert torch.allclose(grads[0][0], d1.t() @ x, atol=1e-7)   # not through layer 2 at all


def test_synthetic_gradients_update_layers_with_predictions_and_predictors_toward_targets():
    learner = make(credit_local.SyntheticGradients)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():                       # predictors start at zero: give them content
        for m in learner.model.aux:
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
    x, y, units = batch(learner)
    n = len(y)
    grads = rule_grads(learner, x, y, units)
    m1, m2 = learner.model.aux
    with torch.no_grad():
        pre, hs = forward_parts(learner, x)
        label = F.one_hot(y, 10).float()
        in1, in2 = torch.cat([hs[1], label], 1), torch.cat([hs[2], label], 1)
        p1, p2 = m1(in1), m2(in2)
        e = output_error(learner, learner.model(x), y, units)
        target2 = n * (e @ learner.model.layers[2].weight)          # the true gradient
        target1 = ((p2 / n) * (pre[1] > 0)) @ learner.model.layers[1].weight * n  # bootstrapped
    assert torch.allclose(grads[2][0], e.t() @ hs[2], atol=1e-6)
    assert torch.allclose(grads[1][0], ((p2 / n) * (pre[1] > 0)).t() @ hs[1], atol=1e-5)
    assert torch.allclose(grads[0][0], ((p1 / n) * (pre[0] > 0)).t() @ x, atol=1e-5)
    assert torch.allclose(m2.weight.grad, ((p2 - target2) / n).t() @ in2, atol=1e-5)
    assert torch.allclose(m1.weight.grad, ((p1 - target1) / n).t() @ in1, atol=1e-4)
    assert torch.allclose(m1.bias.grad, ((p1 - target1) / n).sum(0), atol=1e-5)


def test_forward_forward_layers_learn_locally_from_goodness_of_positive_and_negative_data():
    learner = make(credit_local.ForwardForward, ff_threshold=1.5)
    x, y, units = batch(learner)
    state = learner.generator.get_state()
    shift = torch.randint(1, 10, (len(y),), generator=learner.generator)
    learner.generator.set_state(state)
    grads = rule_grads(learner, x, y, units)
    n = len(y)
    with torch.no_grad():
        labels = torch.cat([y, (y + shift) % 10])
        assert not (labels[n:] == y).any()            # negatives carry a wrong label
        sign = torch.cat([torch.ones(n), -torch.ones(n)])
        h = torch.cat([torch.cat([x, x]), F.one_hot(labels, 10).float()], 1)
        for k, layer in enumerate(learner.model.layers):
            a = layer(h)
            out = torch.relu(a)
            g = out.pow(2).sum(1)
            # d/dg softplus(-s (g - theta)) = -s sigmoid(-s (g - theta)); dg/da = 2 out
            coef = -sign * torch.sigmoid(-sign * (g - 1.5)) / (2 * n)
            delta = coef[:, None] * 2 * out
            assert torch.allclose(grads[k][0], delta.t() @ h, atol=1e-6), k
            h = out / (out.norm(dim=1, keepdim=True) + 1e-8)


def test_forward_forward_predicts_the_label_of_highest_goodness_batched_over_labels():
    learner = make(credit_local.ForwardForward)
    x, _, _ = batch(learner, 6)
    scores = learner.model(x)
    with torch.no_grad():
        for label in range(10):
            h = learner.model.embed(x, torch.full((6,), label))
            assert torch.allclose(scores[:, label], learner.model.goodness(h), atol=1e-5)


def test_target_prop_targets_carry_the_difference_correction():
    learner = make(credit_local.TargetProp, dtp_step=0.3, dtp_noise=0.2)
    x, y, units = batch(learner)
    n = len(y)
    state = learner.generator.get_state()
    grads = rule_grads(learner, x, y, units)
    g = learner.model.aux[0]
    assert (g.in_features, g.out_features) == (4, 5)
    w = [layer.weight for layer in learner.model.layers]
    with torch.no_grad():
        pre, hs = forward_parts(learner, x)
        e = output_error(learner, learner.model(x), y, units) * n      # per-sample dL/dout
        t2 = hs[2] - 0.3 * (e @ w[2])
        t1 = hs[1] + g(t2) - g(hs[2])
        assert not torch.allclose(t1, g(t2), atol=1e-3)   # the correction is not a no-op here
        assert torch.allclose(learner.targets([hs[1], hs[2]], t2)[0], t1, atol=1e-6)
    assert torch.allclose(grads[2][0], (e / n).t() @ hs[2], atol=1e-6)
    assert torch.allclose(grads[1][0], (((hs[2] - t2) / n) * (pre[1] > 0)).t() @ hs[1],
                          atol=1e-6)
    assert torch.allclose(grads[0][0], (((hs[1] - t1) / n) * (pre[0] > 0)).t() @ x, atol=1e-6)
    # the inverse learns to reconstruct a noisy input of layer 2 from layer 2's output
    learner.generator.set_state(state)
    noise = torch.randn(hs[1].shape, generator=learner.generator)
    with torch.no_grad():
        noisy = hs[1] + 0.2 * noise
        above = torch.relu(learner.model.layers[1](noisy))
        residual = (g(above) - noisy) / n
    assert torch.allclose(g.weight.grad, residual.t() @ above, atol=1e-6)


@pytest.mark.parametrize("name", list(RULES))
def test_every_rule_learns_and_reports_its_metrics(name):
    """Two hidden layers, so every rule's path below the top one is used (with one, target
    prop's hidden update is backprop's gradient times dtp_step, which Adam does not see)."""
    def gain(seed):
        learner = make(RULES[name], hidden=[32, 32], batch_size=32, lr=3e-3, seed=seed,
                       stream={"steps_per_task": 120, "seed": seed})
        before = learner.evaluate().average
        metrics = learner.step_round()
        assert learner.done
        assert metrics["units"] == 64 and metrics["depth"] == 2 and metrics["growths"] == 0
        return metrics["acc_avg"] - before

    gains = over_seeds(gain)
    # seeds 0-9 at 120 steps: forward-forward, the slowest and noisiest, gains 0.25-0.58 (mean
    # 0.43, sd 0.11: the mean of three minus 3 standard errors is 0.24), synthetic gradients
    # 0.47-0.68, the others 0.62-0.82. (At 60 steps synthetic gradients, whose predictors start
    # at zero, gained as little as 0.02, and forward-forward 0.16.)
    assert mean(gains) > 0.2, shown(gains)


def test_permuted_stream_reports_forgetting_for_a_local_rule():
    learner = make(credit.DFA, stream={"tasks": 2, "steps_per_task": 10})
    while not learner.done:
        metrics = learner.step_round()
    assert len(learner.rows) == 2 and "forgetting" in metrics and "bwt" in metrics


# -- growing ----------------------------------------------------------------------------------

def probe(learner):
    x, _ = learner.sample(0, 16)
    with torch.no_grad():
        return x, learner.model(x)


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("mode", ["width", "depth"])
def test_growth_keeps_the_function_and_the_rule_keeps_training(name, mode):
    learner = make(RULES[name], growing=True, grow_mode=mode, grow_units=3, max_width=20,
                   max_depth=4, steps_per_round=10)
    learner.step_round()                          # trained weights, not the initialisation
    x, before = probe(learner)
    assert learner.grow()
    with torch.no_grad():
        after = learner.model(x)
    sizes = learner.unit_sizes()
    if mode == "width":
        assert sizes[1:3] == [8, 7]
    else:
        assert len(sizes) == len(learner.model.layers) + 1 and sizes[-2] == 4
        assert len(learner.model.hidden_layers) == 3
    if name == "forward_forward" and mode == "depth":
        # the inserted layer's goodness is ||normalised input||^2 = 1 for every label
        assert torch.allclose(after - before, torch.ones_like(before), atol=1e-5)
    else:
        assert torch.allclose(after, before, atol=1e-5)
    # the rule's tensors grew with the weights: training steps run and move the new units
    first = learner.model.layers[0].weight.detach().clone()
    for _ in range(3):
        assert torch.isfinite(learner.train_step())
    moved = (learner.model.layers[0].weight != first).any(dim=1)
    assert moved[5:].any() if mode == "width" else moved.any()


def test_depth_growth_is_exact_and_gives_each_rule_a_consistent_new_layer():
    fa = make(credit.FeedbackAlignment, growing=True, grow_mode="depth")
    fa.grow()
    assert torch.equal(fa.model.fixed[2], torch.eye(4))         # identity feedback on top
    dtp = make(credit_local.TargetProp, growing=True, grow_mode="depth")
    x, before = probe(dtp)
    dtp.grow()
    assert torch.equal(dtp.model(x), before)                    # identity layer after ReLU
    assert torch.equal(dtp.model.aux[1].weight, torch.eye(4))   # its exact inverse
    sg = make(credit_local.SyntheticGradients, growing=True, grow_mode="depth")
    sg.grow()
    assert torch.equal(sg.model.aux[2].weight, sg.model.aux[1].weight)


def test_a_stalled_learner_grows_and_a_progressing_one_does_not():
    def run(min_delta, patience, seed=0):
        learner = make(credit.Backprop, hidden=[32], batch_size=32, lr=3e-3, growing=True,
                       grow_min_delta=min_delta, grow_patience=patience, grow_units=2,
                       max_width=40, seed=seed, stream={"steps_per_task": 45, "seed": seed})
        return learner, learner.step_round()

    # min_delta = 1 asks the loss to fall to zero: every step after the first stalls
    stalled, metrics = run(1.0, 20)
    assert metrics["growths"] == 2 and metrics["units"] == 36 and stalled.unit_sizes()[1] == 36
    # the same network learning: its smoothed loss keeps beating its best, so it never grows.
    # Backprop's loss falls from the first steps (seeds 0-9: at most 3 steps without a new best);
    # DFA's does not until its weights align with the feedback (up to 27 steps), a real stall.
    growths = over_seeds(lambda seed: run(0.0, 20, seed)[1]["growths"])
    assert growths == [0] * len(growths)
    assert run(1.0, 50)[1]["growths"] == 0          # stalled, but not for long enough


def test_growth_stops_at_the_caps():
    learner = make(credit.Backprop, growing=True, grow_mode="both", grow_units=10, max_width=6,
                   max_depth=3)
    assert learner.grow() and learner.unit_sizes()[1:3] == [6, 6]
    assert learner.grow() and len(learner.unit_sizes()) == 5
    assert not learner.grow()


# -- wiring cost ------------------------------------------------------------------------------

def test_wiring_cost_adds_its_local_gradient_to_a_local_rule():
    from lifelab.learners.space import connection_lengths

    plain = make(credit.DFA)
    wired = make(credit.DFA, wiring_cost=0.01)
    x, y, units = batch(plain)
    grads = rule_grads(plain, x, y, units)
    wired.batch_total = len(y)
    wired.model.zero_grad()
    (wired.rule_loss(x, y, units) / len(y) + wired.penalty()).backward()
    lengths = connection_lengths(wired.positions)
    for (g, _), layer, length in zip(grads, wired.model.layers, lengths, strict=True):
        expected = g + 0.01 * torch.sign(layer.weight.detach()) * length
        assert torch.allclose(layer.weight.grad, expected, atol=1e-6)


def test_wiring_cost_shrinks_long_connections_more_than_short_ones():
    from lifelab.learners.space import connection_lengths

    def long_over_short(learner):
        lengths = connection_lengths(learner.positions)[0].flatten()
        w = learner.model.layers[0].weight.detach().abs().flatten()
        cut = lengths.median()
        return w[lengths > cut].mean() / w[lengths <= cut].mean()

    def shrinkage(seed):
        """long_over_short with the cost over that without, on the same seed and layout."""
        stream = {"steps_per_task": 150, "seed": seed}
        free = make(credit.Backprop, hidden=[16], wiring_cost=1e-9, stream=stream, seed=seed)
        wired = make(credit.Backprop, hidden=[16], wiring_cost=3e-3, stream=stream, seed=seed)
        free.step_round()
        wired.step_round()
        assert torch.equal(free.positions[1], wired.positions[1])
        return float(long_over_short(wired) / long_over_short(free))

    ratios = over_seeds(shrinkage)
    # seeds 0-9: 0.39-0.68 (mean 0.53, sd 0.10: the mean of three plus 3 standard errors 0.70)
    assert mean(ratios) < 0.75, shown(ratios)


def test_positions_grow_with_the_units():
    learner = make(credit.Backprop, wiring_cost=0.01, growing=True, grow_mode="both",
                   grow_units=2, max_width=7)
    for _ in range(3):                 # 5,4 -> 7,6 -> 7,7 -> 7,7,7
        assert learner.grow()
    assert [len(p) for p in learner.positions] == learner.unit_sizes()
    assert [float(p[0, 2]) for p in learner.positions] == [0.0, 1.0, 2.0, 3.0, 4.0]
    x, y, units = batch(learner)
    assert torch.isfinite(learner.penalty())


# -- state and config -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(RULES))
def test_resume_is_bit_for_bit_after_growth(name):
    config = {"growing": True, "grow_mode": "both", "grow_min_delta": 1.0, "grow_patience": 4,
              "grow_units": 2, "max_width": 7, "steps_per_round": 6, "wiring_cost": 0.001}
    straight = make(RULES[name], stream={"steps_per_task": 24}, **config)
    straight.step_round()
    assert straight.growths > 0
    resumed = make(RULES[name], stream={"steps_per_task": 24}, **config)
    resumed.load_state_dict(straight.state_dict())
    assert resumed.unit_sizes() == straight.unit_sizes()
    for _ in range(2):
        assert resumed.step_round() == straight.step_round()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(straight.positions, resumed.positions,
                                                 strict=True))


@pytest.mark.parametrize("config, fix", [
    ({"grow_mode": "sideways"}, "use one of width, depth, both"),
    ({"growing": True, "max_width": 3}, "raise max_width"),
    ({"growing": True, "grow_mode": "depth", "max_depth": 1}, "raise max_depth"),
    ({"wiring_cost": -1.0}, "must be a number >= 0"),
    ({"grow_min_delta": 2.0}, "must be a number between 0 and 1"),
    ({"ff_threshold": 1.0}, "use one of"),
])
def test_bad_config_is_one_line_naming_the_fix(config, fix):
    with pytest.raises(ConfigError, match=fix) as info:
        make(credit.DFA, **config)
    assert "\n" not in str(info.value)


def test_forward_forward_needs_two_labels_per_task():
    with pytest.raises(ConfigError, match="raise stream.classes_per_task"):
        make(credit_local.ForwardForward,
             stream={"kind": "split", "tasks": 2, "classes_per_task": 1})


@pytest.mark.parametrize("preset", ["credit-compare", "credit-pbt"])
def test_presets_validate(preset):
    spec = load_spec(preset)
    assert set(RULES) <= set(spec.learner_names())
