"""Neurons in space: layout, wiring cost (value, gradient, effect on training), bad inputs."""

import math

import pytest
import torch
from outcomes import mean, over_seeds, paired, shown
from torch import nn
from torch.nn import functional as F

from lifelab.learners.space import (
    UnitPositions,
    connection_lengths,
    place_units,
    unit_importances,
    wiring_cost,
)


def _tiny(sizes=(4, 3, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    positions = place_units(list(sizes), g)
    weights = [torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
               for n_in, n_out in zip(sizes, sizes[1:], strict=False)]
    return weights, [p.double() for p in positions]


def test_layout_grid_line_and_planes():
    grid, hidden, out = place_units([9, 5, 2], torch.Generator().manual_seed(0))
    assert grid.shape == (9, 3) and hidden.shape == (5, 3) and out.shape == (2, 3)
    assert sorted(set(grid[:, 0].tolist())) == [-1.0, 0.0, 1.0]      # a 3 x 3 grid
    assert sorted(set(grid[:, 1].tolist())) == [-1.0, 0.0, 1.0]
    assert grid[1, 0] > grid[0, 0] and grid[3, 1] < grid[0, 1]        # row-major, row 0 on top
    assert (grid[:, 2] == 0).all() and (hidden[:, 2] == 1).all() and (out[:, 2] == 2).all()
    assert hidden[:, :2].abs().max() <= 1.0
    line = place_units([5, 2], torch.Generator().manual_seed(0))[0]
    assert torch.equal(line[:, 0], torch.linspace(-1, 1, 5)) and (line[:, 1:] == 0).all()
    again = place_units([9, 5, 2], torch.Generator().manual_seed(0))[1]
    other = place_units([9, 5, 2], torch.Generator().manual_seed(1))[1]
    assert torch.equal(hidden, again) and not torch.equal(hidden, other)


def test_wiring_cost_matches_double_loop():
    weights, positions = _tiny()
    expected = 0.0
    for layer, w in enumerate(weights):
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                d = math.dist(positions[layer + 1][i].tolist(), positions[layer][j].tolist())
                expected += abs(w[i, j].item()) * d
    assert wiring_cost(weights, positions).item() == pytest.approx(expected, rel=1e-12)


def test_gradient_is_sign_times_length():
    weights, positions = _tiny()
    weights = [w.requires_grad_() for w in weights]
    wiring_cost(weights, positions).backward()
    for w, length in zip(weights, connection_lengths(positions), strict=True):
        torch.testing.assert_close(w.grad, torch.sign(w.detach()) * length)


def test_gradient_flows_to_learned_positions_and_shortens_wiring():
    def shortened(seed):
        g = torch.Generator().manual_seed(seed)
        layout = UnitPositions([4, 6, 2], g, learn=True)
        weights = [torch.randn(6, 4, generator=g), torch.randn(2, 6, generator=g)]
        fixed = [p.clone() for p in (layout.layers()[0], layout.layers()[2])]
        assert [n for n, _ in layout.named_parameters()] == ["xy_1"]
        opt = torch.optim.SGD(layout.parameters(), lr=0.05)
        costs = [wiring_cost(weights, layout.layers()).item()]
        for _ in range(50):
            opt.zero_grad()
            wiring_cost(weights, layout.layers()).backward()
            opt.step()
            costs.append(wiring_cost(weights, layout.layers()).item())
        # planes 1 apart: no length is 0, the cost is smooth and convex in the positions, and
        # a small step never raises it (up to float32 rounding once it has converged)
        assert all(b <= a * (1 + 1e-6) for a, b in zip(costs, costs[1:], strict=False))
        assert torch.equal(layout.layers()[0], fixed[0])
        assert torch.equal(layout.layers()[2], fixed[1])
        assert (layout.layers()[1][:, 2] == 1).all()                   # z stays on its plane
        return costs[-1] / costs[0]

    ratios = over_seeds(shortened)
    # how much 50 steps gain depends on how far the drawn layout is from its best: seeds 0-9
    # 0.80-0.94 (mean 0.87, sd 0.05: the mean of three plus 3 standard errors 0.95)
    assert mean(ratios) < 0.96, shown(ratios)
    assert "pos_0" in UnitPositions([4, 6, 2], torch.Generator()).state_dict()   # checkpointed


def _train(x, y, penalty, seed):
    """A 16-12-3 tanh MLP from a seeded init, SGD on cross-entropy + penalty(weights)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    weights = [net[0].weight, net[2].weight]
    for _ in range(200):
        loss = F.cross_entropy(net(x), y) + penalty(weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [w.detach().abs() for w in weights]


def test_wiring_cost_prunes_long_connections_more_than_short_ones():
    def kept_long_over_short(seed):
        """Weight mass kept (vs no cost) by the longest quarter of the hidden layer's incoming
        connections over that of the shortest: with the wiring cost, and with a control of the
        same total strength where every connection is equally long (plain L1)."""
        g = torch.Generator().manual_seed(seed)
        positions = place_units([16, 12, 3], g)
        x = torch.randn(256, 16, generator=g)
        y = (x @ torch.randn(16, 3, generator=g)).argmax(1)
        lengths = connection_lengths(positions)
        free = _train(x, y, lambda ws: 0.0, seed + 1)
        wired = _train(x, y, lambda ws: 1e-2 * wiring_cost(ws, positions), seed + 1)
        means = [d.mean().item() for d in lengths]
        flat = _train(x, y, lambda ws: 1e-2 * sum(w.abs().sum() * m
                                                  for w, m in zip(ws, means, strict=True)),
                      seed + 1)
        d = lengths[0]
        low, high = d.flatten().quantile(torch.tensor([0.25, 0.75]))

        def ratio(trained):
            kept = [trained[0][m].sum() / free[0][m].sum() for m in (d <= low, d >= high)]
            return (kept[1] / kept[0]).item()

        return ratio(wired), ratio(flat)

    wired, flat = zip(*over_seeds(kept_long_over_short), strict=True)
    # seeds 0-9: wired 0.32-0.70 (mean 0.51, sd 0.14: the mean of three plus 3 standard errors
    # 0.76), flat above wired by 0.33-0.70 (mean 0.47, sd 0.12: minus 3 standard errors 0.27).
    # (The 3-unit read-out's 36 connections are no test: each output needs its own hidden units
    # wherever they sit, and its ratio ranges 0.14-1.21 over the same seeds.)
    assert mean(wired) < 0.8, shown(wired)
    gap = paired(flat, wired)
    assert mean(gap) > 0.2, shown(gap)


def test_importances_per_layer():
    w0 = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    w1 = torch.tensor([[1.0, 0.0, 5.0]])
    inputs, hidden, outputs = unit_importances([w0, w1])
    torch.testing.assert_close(inputs, torch.tensor([3.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(hidden, torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(outputs, torch.tensor([26.0 ** 0.5], dtype=torch.float64))


@pytest.mark.parametrize("call, match", [
    (lambda: place_units([], torch.Generator()), "non-empty list of positive"),
    (lambda: place_units([4, 0], torch.Generator()), "non-empty list of positive"),
    (lambda: wiring_cost([torch.zeros(3, 4)], [torch.zeros(4, 3)]), "position tensors"),
    (lambda: wiring_cost([torch.zeros(3, 5)], [torch.zeros(4, 3), torch.zeros(3, 3)]),
     r"place_units\(sizes\)"),
    (lambda: wiring_cost([torch.zeros(3, 4)], [torch.zeros(4, 2), torch.zeros(3, 2)]),
     r"\(n, 3\)"),
    (lambda: wiring_cost([torch.zeros(3, 4), torch.zeros(2, 5)],
                         [torch.zeros(4, 3), torch.zeros(3, 3), torch.zeros(2, 3)]),
     "in order"),
    (lambda: wiring_cost([], []), "non-empty list"),
])
def test_bad_inputs_name_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()
