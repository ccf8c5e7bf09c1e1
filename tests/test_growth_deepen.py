"""Deepening with identity-initialised layers, and norm-preserving widening (learners.growth)."""

import copy

import pytest
import torch
from torch import nn

from lifelab.learners import growth


def mlp(sizes, activation=nn.ReLU, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, o in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(i, o), activation()]
    return nn.Sequential(*layers[:-1])


def deepen_sequential(model: nn.Sequential, after: int) -> nn.Sequential:
    """`model` with [identity linear, the same activation] inserted after module `after`, which
    must be an idempotent activation such as nn.ReLU following a linear layer (how a learner's
    growth inserts a layer)."""
    modules = list(model)
    activation = modules[after] if 0 <= after < len(modules) else None
    if not isinstance(activation, (nn.ReLU, nn.Hardtanh)):
        raise ValueError(f"deepen after an idempotent activation (nn.ReLU), got module {after}: "
                         f"{type(activation).__name__}")
    ref = next(m.weight for m in reversed(modules[:after]) if isinstance(m, nn.Linear))
    new = growth.identity_linear(ref.shape[0], ref.device, ref.dtype)
    return nn.Sequential(*modules[:after + 1], new, copy.deepcopy(activation), *modules[after + 1:])


def test_identity_linear_computes_its_input_exactly():
    layer = growth.identity_linear(7)
    x = torch.randn(20, 7)
    assert torch.equal(layer(x), x)


@pytest.mark.parametrize("after", [1, 3])
def test_deepening_a_relu_mlp_leaves_its_outputs_identical(after):
    net = mlp([6, 5, 4, 3])
    x = torch.randn(50, 6) * 3
    deeper = deepen_sequential(net, after)
    assert len(deeper) == len(net) + 2
    assert isinstance(deeper[after + 1], nn.Linear) and isinstance(deeper[after + 2], nn.ReLU)
    assert torch.equal(deeper(x), net(x))                 # exact, not merely close
    # the new layer trains: it gets a gradient like any other
    deeper(x).pow(2).sum().backward()
    assert deeper[after + 1].weight.grad.abs().sum() > 0


def test_deepening_is_not_exact_for_tanh_which_is_not_idempotent():
    net = mlp([6, 5, 3], activation=nn.Tanh)
    with pytest.raises(ValueError, match="idempotent"):
        deepen_sequential(net, 1)
    # what the inserted layer would compute after tanh: tanh(tanh(z)) != tanh(z)
    h = torch.tanh(net[0](torch.randn(10, 6)))
    assert not torch.allclose(torch.tanh(growth.identity_linear(5)(h)), h, atol=1e-3)


def test_deepening_rejects_a_position_that_is_not_an_activation():
    with pytest.raises(ValueError, match="nn.ReLU"):
        deepen_sequential(mlp([4, 3, 2]), 0)


@pytest.mark.parametrize("with_reader", [True, False])
def test_homogeneous_widening_keeps_sums_of_squares_and_the_readers_input(with_reader):
    net = mlp([6, 5, 3])
    x = torch.randn(40, 6)
    h = torch.relu(net[0](x))
    reader = net[2] if with_reader else None
    layer, new_reader, umap = growth.widen_homogeneous(net[0], reader, 11,
                                                       torch.Generator().manual_seed(2))
    wide = torch.relu(layer(x))
    assert wide.shape == (40, 11)
    assert torch.allclose(wide.pow(2).sum(1), h.pow(2).sum(1), atol=1e-5)
    # copies are scaled versions of their source (sqrt of the share), not equal copies
    j = 7
    src = int(umap.source[j])
    assert torch.allclose(wide[:, j], h[:, src] * umap.share[j].sqrt().float(), atol=1e-6)
    if with_reader:
        assert torch.allclose(new_reader(wide), net[2](h), atol=1e-5)
    else:
        assert new_reader is None
