"""Reversible blocks: exact inverse, exact gradients, activation memory flat in depth, learner."""

import pytest
import torch
from outcomes import over_seeds, shown

from lifelab.errors import ConfigError
from lifelab.learners.reversible import (
    Reversible,
    ReversibleBlock,
    ReversibleMLP,
    ReversibleStack,
    SavedTensorMeter,
)
from lifelab.platform.data import load_dataset
from lifelab.trainables.registry import learner_class


def _stack(width=6, depth=3, memory_saving=True, seed=0):
    torch.manual_seed(seed)
    return ReversibleStack(width, depth, memory_saving).double()


def test_inverse_reconstructs_the_input():
    stack = _stack(width=8, depth=6)
    x = torch.randn(5, 8, dtype=torch.float64)
    with torch.no_grad():
        y = stack(x)
        assert (y - x).abs().max() > 0.1                      # the blocks do something
        torch.testing.assert_close(stack.inverse(y), x, rtol=0, atol=1e-12)


def test_gradcheck_of_the_memory_saving_backward():
    stack = _stack(width=4, depth=2)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    # gradcheck perturbs the parameters themselves in place, so the stack sees each change
    assert type(stack(x).grad_fn).__name__ == "_ReversibleBlockFunctionBackward"
    assert torch.autograd.gradcheck(lambda x, *p: stack(x), (x, *stack.parameters()))


def test_gradients_equal_ordinary_autograd():
    x = torch.randn(7, 6, dtype=torch.float64)
    grads = {}
    for saving in (True, False):
        stack = _stack(memory_saving=saving)
        xi = x.clone().requires_grad_()
        (stack(xi).sin().sum()).backward()
        grads[saving] = [xi.grad, *(p.grad for p in stack.parameters())]
    assert len(grads[True]) == 1 + 3 * 8
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_parameter_gradients_reach_grad_block_by_block():
    """Each block hands its gradients to autograd when done, so none pile up until the end;
    a parameter's hook fires once (not again inside the recomputation)."""
    stack = _stack(depth=3)
    seen = []
    stack.blocks[0].f[0].weight.register_hook(
        lambda g: seen.append(stack.blocks[2].f[0].weight.grad is not None))
    stack(torch.randn(4, 6, dtype=torch.float64)).sum().backward()
    assert seen == [True]


def _saved_bytes(depth: int, memory_saving: bool) -> tuple[int, int]:
    """(bytes saved for backward after the forward, peak over forward and backward)."""
    torch.manual_seed(0)
    model = ReversibleMLP(20, 16, depth, 3, memory_saving)
    x = torch.randn(32, 20)
    with SavedTensorMeter(model.parameters()) as meter:
        loss = model(x).square().mean()
        after_forward = meter.live
        loss.backward()
    assert meter.live == 0                                    # backward freed everything
    assert all(p.grad is not None for p in model.parameters())
    return after_forward, meter.peak


def test_saved_activations_stay_flat_with_depth_while_ordinary_autograd_grows():
    depths = (1, 4, 16)
    saving = [_saved_bytes(d, True) for d in depths]
    ordinary = [_saved_bytes(d, False) for d in depths]
    assert len({s for s, _ in saving}) == 1 and len({p for _, p in saving}) == 1
    per_block = (ordinary[1][0] - ordinary[0][0]) / 3
    assert per_block >= 32 * 16 * 4                          # at least a block's output
    assert ordinary[2][0] - ordinary[1][0] == pytest.approx(12 * per_block)   # linear in depth
    assert saving[2][1] < ordinary[2][1] / 4


def test_reversible_learner_trains_like_the_ordinary_network():
    data = load_dataset("mnist5k")

    def final(seed):
        stream = {"kind": "permuted", "tasks": 1, "steps_per_task": 30, "seed": seed}
        runs = [learner_class("reversible")({"stream": stream, "width": 32, "depth": 3,
                                             "memory_saving": saving, "seed": seed}, data=data)
                for saving in (True, False)]
        metrics = [learner.step_round() for learner in runs]
        assert metrics[0]["train_loss"] == pytest.approx(metrics[1]["train_loss"], rel=1e-4)
        assert metrics[0]["acc_avg"] == pytest.approx(metrics[1]["acc_avg"], abs=0.005)
        assert isinstance(runs[0].model, ReversibleMLP) and len(runs[0].model.stack.blocks) == 3
        return metrics[0]["acc_avg"]

    accs = over_seeds(final)
    assert min(accs) > 0.5, shown(accs)       # it learns: chance 0.1; seeds 0-9 0.68-0.77


@pytest.mark.parametrize("call, error, match", [
    (lambda: Reversible.validate_config({"width": 31}), ConfigError, "must be even"),
    (lambda: Reversible.validate_config({"depth": 0}), ConfigError,
     "'depth' must be an integer > 0"),
    (lambda: Reversible.validate_config({"hidden": [8]}), ConfigError, "use one of"),
    (lambda: ReversibleBlock(5), ValueError, "even width"),
    (lambda: ReversibleStack(4, 0), ValueError, "depth >= 1"),
])
def test_bad_config_names_the_fix(call, error, match):
    with pytest.raises(error, match=match):
        call()
