"""Neurons as points in 3-D space, and a wiring cost that makes long connections expensive.

Layout (`place_units`): layer l lies in the plane z = l. The input layer sits on a square grid over
[-1, 1]^2 when its size is a square number (MNIST pixels keep their image neighbourhoods), else on
a line along x; every later layer's units are drawn uniformly in [-1, 1]^2. Layers one apart are
thus 1 apart in z, while units of a layer are up to 2*sqrt(2) apart in x, y, so where a connection
lands in the plane matters as much as which layer it reaches.

Wiring cost (`wiring_cost`): sum over layers l of sum_ij |W_l[i, j]| * ||pos_{l+1}[i] - pos_l[j]||,
with W_l of shape (out, in) as in `nn.Linear`. It is an L1 penalty whose strength grows with the
length of each connection, so gradient descent on task loss + lambda * cost drives long
connections to zero first: the network becomes sparse and local. Its gradient w.r.t. W_l[i, j] is
sign(W_l[i, j]) * length_ij.

Positions are fixed by default (plain tensors). They may also be learned (`UnitPositions` with
`learn=True`): hidden units then move in x, y toward the units they connect to, shortening the
wiring, while the input grid, the output layer and every z stay fixed. Nothing keeps two units of a
layer apart, so under a strong cost several may converge on one point; that is the cost's optimum,
not a bug, and a researcher who wants spread units adds a repulsion term.

Importance (`unit_importances`): ||incoming weights|| x ||outgoing weights|| per hidden unit (the
shared rule of `growth.unit_importance`); the norm of the one side that exists for the input and
output layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lifelab.learners.growth import unit_importance

#: half the side of the square every layer spans in x and y
EXTENT = 1.0


def place_units(sizes: list[int], generator: torch.Generator) -> list[torch.Tensor]:
    """Positions (n_l, 3) of every layer's units, the input layer first (see the module doc)."""
    if not isinstance(sizes, (list, tuple)) or not sizes or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise ValueError(f"sizes must be a non-empty list of positive layer sizes (input first), "
                         f"got {sizes!r}")
    positions = [_input_layout(sizes[0])]
    for layer, n in enumerate(sizes[1:], start=1):
        xy = (torch.rand(n, 2, generator=generator) * 2 - 1) * EXTENT
        positions.append(torch.cat([xy, torch.full((n, 1), float(layer))], dim=1))
    return positions


def _input_layout(n: int) -> torch.Tensor:
    side = math.isqrt(n)
    if side * side == n and n > 1:                   # an image: row-major grid, row 0 at the top
        ticks = torch.linspace(-EXTENT, EXTENT, side)
        y, x = torch.meshgrid(-ticks, ticks, indexing="ij")
        xy = torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)
    else:
        xy = torch.zeros(n, 2)
        xy[:, 0] = torch.linspace(-EXTENT, EXTENT, n) if n > 1 else 0.0
    return torch.cat([xy, torch.zeros(n, 1)], dim=1)


def connection_lengths(positions: list[torch.Tensor]) -> list[torch.Tensor]:
    """Length of every connection: (n_{l+1}, n_l) per layer, laid out like the weights."""
    _check_positions(positions)
    # the non-matmul path is exact at short distances and differentiable at zero distance
    return [torch.cdist(after, before, compute_mode="donot_use_mm_for_euclid_dist")
            for before, after in zip(positions, positions[1:], strict=False)]


def wiring_cost(weights: list[torch.Tensor], positions: list[torch.Tensor]) -> torch.Tensor:
    """sum_l sum_ij |W_l[i, j]| * ||pos_{l+1}[i] - pos_l[j]|| (a scalar, differentiable w.r.t.
    the weights and any positions that require grad). Never builds more than a weight-sized
    matrix per layer."""
    _check_shapes(weights, positions)
    total = weights[0].new_zeros(())
    for w, length in zip(weights, connection_lengths(positions), strict=True):
        total = total + (w.abs() * length.to(device=w.device, dtype=w.dtype)).sum()
    return total


def unit_importances(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Importance of every unit, input layer first: ||incoming|| x ||outgoing|| for hidden units,
    ||outgoing|| for inputs, ||incoming|| for outputs (float64, detached)."""
    if not weights:
        raise ValueError("unit_importances needs at least one weight matrix")
    _check_shapes(weights, None)
    out = [weights[0].detach().double().norm(dim=0)]
    out += [unit_importance(w_in, w_out) for w_in, w_out in zip(weights, weights[1:],
                                                                strict=False)]
    out.append(weights[-1].detach().double().norm(dim=1))
    return out


class UnitPositions(nn.Module):
    """The layout as a module, so positions live in `state_dict` (checkpoints, plots).

    learn=False: every position is a buffer. learn=True: the x, y of hidden units are parameters
    (give them to the optimizer with the weights); inputs, outputs and z stay buffers."""

    def __init__(self, sizes: list[int], generator: torch.Generator, learn: bool = False):
        super().__init__()
        placed = place_units(sizes, generator)
        self.learn = learn
        self.n_layers = len(placed)
        for layer, pos in enumerate(placed):
            movable = learn and 0 < layer < len(placed) - 1
            if movable:
                self.register_parameter(f"xy_{layer}", nn.Parameter(pos[:, :2].clone()))
                self.register_buffer(f"z_{layer}", pos[:, 2:].clone())
            else:
                self.register_buffer(f"pos_{layer}", pos)

    def layers(self) -> list[torch.Tensor]:
        """The current positions, (n_l, 3) per layer (differentiable where learned)."""
        out = []
        for layer in range(self.n_layers):
            if hasattr(self, f"pos_{layer}"):
                out.append(getattr(self, f"pos_{layer}"))
            else:
                out.append(torch.cat([getattr(self, f"xy_{layer}"), getattr(self, f"z_{layer}")],
                                     dim=1))
        return out


def _check_positions(positions: list[torch.Tensor]) -> None:
    if not isinstance(positions, (list, tuple)) or len(positions) < 2:
        raise ValueError("positions must be a list of (n, 3) tensors, one per layer including "
                         "the input layer (use place_units)")
    for layer, pos in enumerate(positions):
        if not isinstance(pos, torch.Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
            shape = tuple(pos.shape) if isinstance(pos, torch.Tensor) else type(pos).__name__
            raise ValueError(f"positions[{layer}] must be (n, 3) coordinates, got {shape}")


def _check_shapes(weights: list[torch.Tensor], positions: list[torch.Tensor] | None) -> None:
    if not isinstance(weights, (list, tuple)) or not weights:
        raise ValueError("weights must be a non-empty list of (out, in) matrices")
    for layer, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise ValueError(f"weights[{layer}] must be an (out, in) matrix like nn.Linear.weight")
        if layer and w.shape[1] != weights[layer - 1].shape[0]:
            raise ValueError(f"weights[{layer}] reads {w.shape[1]} units but weights[{layer - 1}] "
                             f"has {weights[layer - 1].shape[0]} outputs: pass the layers in order")
    if positions is None:
        return
    if isinstance(positions, (list, tuple)) and len(positions) != len(weights) + 1:
        raise ValueError(f"{len(weights)} weight matrices need {len(weights) + 1} position "
                         f"tensors (input layer included), got {len(positions)}")
    _check_positions(positions)
    for layer, w in enumerate(weights):
        want = (positions[layer + 1].shape[0], positions[layer].shape[0])
        if tuple(w.shape) != want:
            raise ValueError(f"weights[{layer}] is {tuple(w.shape)} but the positions give "
                             f"{want} (out, in): place_units(sizes) must use the layer sizes")
