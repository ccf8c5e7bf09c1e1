"""Function-preserving growth and importance-based shrinking (lifelab.learners.growth)."""

import pytest
import torch
from torch import nn

from lifelab.learners import growth


def mlp(sizes, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, o in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(i, o), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@pytest.mark.parametrize("split", ["random", "equal"])
def test_widening_preserves_the_function(split):
    net = mlp([6, 5, 4, 3])
    x = torch.randn(50, 6)
    before = net(x)
    gen = torch.Generator().manual_seed(1)
    umap = growth.widen_map(5, 12, gen, split=split)
    assert umap.exact and umap.width == 12 and torch.equal(umap.source[:5], torch.arange(5))
    # the shares of each old unit's copies sum to one
    total = torch.zeros(5, dtype=torch.float64).index_add_(0, umap.source, umap.share)
    assert torch.allclose(total, torch.ones(5, dtype=torch.float64))
    wide = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4), nn.ReLU(),
                         nn.Linear(4, 3))
    with torch.no_grad():
        wide[0].weight.copy_(umap.take(net[0].weight, 0))
        wide[0].bias.copy_(umap.take(net[0].bias, 0))
        wide[2].weight.copy_(umap.spread(net[2].weight, 1))
        wide[2].bias.copy_(net[2].bias)
        wide[4].load_state_dict(net[4].state_dict())
    after = wide(x)
    assert torch.allclose(after, before, atol=1e-6, rtol=0)
    # new units are copies of old ones: each new row equals its source row
    assert torch.equal(wide[0].weight[5:], net[0].weight[umap.source[5:]])


def test_resize_linear_widens_both_layers_and_copies_learn_apart():
    net = mlp([4, 3, 2])
    x, y = torch.randn(64, 4), torch.randn(64, 2)
    layer, reader, umap = growth.resize_linear(net[0], net[2], 9, torch.Generator().manual_seed(0))
    wide = nn.Sequential(layer, nn.ReLU(), reader)
    assert layer.weight.shape == (9, 4) and reader.weight.shape == (2, 9)
    assert torch.allclose(wide(x), net(x), atol=1e-6, rtol=0)
    # random shares: a copy and its source get different gradients, so they do not stay twins
    j = 3
    src = int(umap.source[j])
    ((wide(x) - y) ** 2).mean().backward()
    assert not torch.allclose(layer.weight.grad[j], layer.weight.grad[src])


def test_equal_split_copies_stay_symmetric_which_is_why_random_is_the_default():
    net = mlp([4, 3, 2])
    umap = growth.widen_map(3, 6, torch.Generator().manual_seed(0), split="equal")
    w_in = umap.take(net[0].weight, 0).detach().requires_grad_()
    w_out = umap.spread(net[2].weight, 1).detach().requires_grad_()
    out = torch.relu(torch.randn(32, 4) @ w_in.t()) @ w_out.t()
    out.pow(2).sum().backward()
    j = 3
    src = int(umap.source[j])
    assert torch.allclose(w_in.grad[j], w_in.grad[src])


def test_shrinking_keeps_the_most_important_units_in_order():
    w_in = torch.tensor([[1.0, 0.0], [0.0, 0.1], [3.0, 0.0], [0.0, 2.0]])
    w_out = torch.ones(2, 4)
    importance = growth.unit_importance(w_in, w_out)
    umap = growth.resize_map(4, 2, importance)
    assert umap.source.tolist() == [2, 3] and not umap.exact
    assert growth.resize_map(4, 4, importance).exact
    with pytest.raises(ValueError, match="importance"):
        growth.resize_map(4, 2)
    # a unit that nothing reads is unimportant however large its incoming weights
    w_out[:, 2] = 0
    assert 2 not in growth.shrink_map(growth.unit_importance(w_in, w_out), 2).source.tolist()


def test_growing_an_input_block_preserves_the_output_whatever_the_new_inputs():
    torch.manual_seed(0)
    layer = nn.Linear(7, 5)                      # inputs: [a (3) | b (4)]
    a, b = torch.randn(10, 3), torch.randn(10, 4)
    before = layer(torch.cat([a, b], 1))
    weight, keep = growth.resize_inputs(layer.weight, 0, 3, 6)      # a: 3 -> 6
    assert keep.tolist() == [0, 1, 2, -1, -1, -1]
    a2 = growth.resize_input_values(a, keep, torch.randn(10, 6))
    assert torch.equal(a2[:, :3], a) and a2[:, 3:].abs().sum() > 0
    weight, keep_b = growth.resize_inputs(weight, 6, 4, 5)          # b: 4 -> 5
    b2 = growth.resize_input_values(b, keep_b, torch.randn(10, 5))
    after = torch.nn.functional.linear(torch.cat([a2, b2], 1), weight, layer.bias)
    assert weight.shape == (5, 11)
    assert torch.allclose(after, before, atol=1e-6, rtol=0)


def test_shrinking_an_input_block_keeps_the_columns_that_matter():
    weight = torch.tensor([[1.0, 5.0, 0.1, 9.0], [1.0, 5.0, 0.1, 9.0]])
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    importance = growth.input_importance(weight[:, 1:3], values[:, 1:3])
    new, keep = growth.resize_inputs(weight, 1, 2, 1, importance)
    assert keep.tolist() == [0] and new.tolist() == [[1.0, 5.0, 9.0], [1.0, 5.0, 9.0]]
    assert growth.resize_input_values(values[:, 1:3], keep, torch.zeros(1, 1)).tolist() == [[1.0]]


def test_resize_lstm_cell_widened_cell_computes_the_same_over_time_and_narrowing_keeps_shape():
    torch.manual_seed(0)
    cell, out = nn.LSTMCell(3, 4), nn.Linear(4, 2)
    mix = nn.Linear(2 + 4, 5)                    # reads [other input (2) | h (4)]
    xs, other = torch.randn(6, 10, 3), torch.randn(10, 2)

    def run(cell, out, mix):
        h = c = torch.zeros(10, cell.hidden_size)
        outs = []
        for x in xs:                             # h feeds back through weight_hh every step
            h, c = cell(x, (h, c))
            outs.append(torch.cat([out(h), mix(torch.cat([other, h], 1))], 1))
        return torch.stack(outs), h

    state = {**{f"cell.{k}": v for k, v in cell.state_dict().items()},
             **{f"out.{k}": v for k, v in out.state_dict().items()},
             **{f"mix.{k}": v for k, v in mix.state_dict().items()}}
    before, h = run(cell, out, mix)
    wide_state = dict(state)
    umap = growth.resize_lstm_cell(wide_state, "cell", {"out.weight": 0, "mix.weight": 2}, 9,
                                   torch.Generator().manual_seed(1))
    wide = (nn.LSTMCell(3, 9), nn.Linear(9, 2), nn.Linear(2 + 9, 5))
    for prefix, module in zip(("cell", "out", "mix"), wide, strict=True):
        module.load_state_dict({k[len(prefix) + 1:]: v for k, v in wide_state.items()
                                if k.startswith(prefix + ".")})
    after, h_wide = run(*wide)
    assert umap.exact and umap.width == 9
    assert torch.allclose(after, before, atol=1e-5, rtol=0)
    assert torch.allclose(h_wide, umap.take(h, 1), atol=1e-5, rtol=0)   # copies carry copies
    # the shares matter: the wider cell is not just the old one with ignored units
    assert not torch.equal(wide_state["cell.weight_hh"][:, :4], state["cell.weight_hh"])
    narrow = dict(state)
    umap = growth.resize_lstm_cell(narrow, "cell", {"out.weight": 0, "mix.weight": 2}, 2)
    assert not umap.exact and narrow["cell.weight_ih"].shape == (8, 3)
    assert narrow["cell.weight_hh"].shape == (8, 2) and narrow["mix.weight"].shape == (5, 4)
    assert torch.equal(narrow["mix.weight"][:, :2], state["mix.weight"][:, :2])
