"""Function-preserving growth and importance-based shrinking of MLP layers and LSTM cells, shared
by every learner's `adapt` (population-based search mutating sizes) and by networks that grow.

Linear weights are (out, in), as in `nn.Linear`. Resizing the units of a hidden layer touches two
kinds of tensors, and one `UnitMap` describes both:

- tensors *indexed by the units* (the layer's own weight rows and bias, its activations, snapshots
  of them): `UnitMap.take(t, dim)`; for a layer's incoming weights `UnitMap.incoming` (below);
- tensors that *read the units* (the next layer's weight columns): `UnitMap.spread(t, dim)`.

Widening (Net2Net, Chen et al. 2016): a new unit copies an existing unit's incoming weights, so it
computes the same activation, and the copies of a unit share its outgoing weights, so the readers
receive the same sum: the function is preserved up to float rounding, for any elementwise
activation. How the outgoing weights are shared decides whether the copies ever become different
units. With positive shares a and b (Net2Net's equal halves, or random ones) they do not under
Adam: their incoming weights get gradients a g and b g, whose normalised updates are equal, and
their outgoing weights equal gradients (same activation). Measured (benchmarks/growth_diversity.py,
docs/growth.md): a 784-16-16-10 MLP on MNIST-5k widened to 32-32, after 300 Adam steps the copies'
incoming weights differed by 0.6% and the training loss was 0.016 below the unwidened network's.
`widen_map`'s default ("signed") gives a unit's copy a small *negative* share -s (the unit keeps
1 + s): the copy's gradients have the opposite sign to its unit's, which no normalisation undoes,
so they learn apart under every optimizer: 34% apart after the same 300 steps, loss 0.021 lower
(SGD: 0.014 lower, where positive shares ended 0.017 *higher*; hnet: 0.33 against 0.19 lower).

Measured better still: new units with *random* incoming weights and zero outgoing weights
(split "zero" with `UnitMap.incoming`; `resize_layer` for a dense layer in a state dict): loss
0.066 lower (hnet 0.42), the wide network trained from scratch reaching 0.085. It needs the
caller to build the incoming rows with `incoming` rather than `take`, and a rule whose per-unit
tensors follow the shares (synthetic gradients' predictors) then gives a new unit no signal
until its outgoing weights have grown; copies (and "signed") keep everything `take`n consistent.

An LSTM cell (`resize_lstm_cell`) is resized the same way, unit by unit across its four gate
blocks; its recurrent matrix reads h, so it is one of the readers whose columns are spread.

Growing an *input* (e.g. a longer embedding feeding a layer): the layer gets zero weight columns
for the new inputs, and the new input entries may be anything (non-zero, so that the new columns
receive gradients); the output is unchanged.

Deepening inserts an identity-initialised layer after an activation (exact for ReLU; see
`identity_linear`). `widen_homogeneous` widens keeping every sum of squares over the layer (for
networks that read a layer's norm, such as forward-forward), exact for ReLU: there a new unit
cannot start silent (a unit whose activation is zero gets no gradient from a sum of squares), so
it is a scaled Net2Net copy with a positive share. Adam moves scaled copies apart (equal steps on
different scales turn their directions: 10% apart after 300 steps of forward-forward); plain
SGD keeps them proportional, and breaking that needs noise that changes the goodness.

Shrinking keeps the most important units: unit importance is ||incoming row|| x ||outgoing column||
(the size of the path through the unit); input importance is ||weight column|| x rms of the input
value. Shrinking is not function-preserving; it keeps as much of the function as these proxies can.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class UnitMap:
    """How the units of a resized layer come from the old units: unit j is (a copy of) old unit
    `source[j]` and carries the fraction `share[j]` of that unit's outgoing weights; the last
    `added` units are new (widening)."""

    source: torch.Tensor   # (new_width,) int64
    share: torch.Tensor    # (new_width,) float64
    exact: bool            # True when the function is preserved (widening, identity)
    added: int = 0

    @property
    def width(self) -> int:
        return len(self.source)

    def take(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """`t` indexed by the units along `dim`: incoming weight rows, biases, activations."""
        return t.index_select(dim, self.source.to(t.device))

    def spread(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """`t` reading the units along `dim` (the next layer's weight columns), shares applied."""
        shape = [1] * t.dim()
        shape[dim] = self.width
        share = self.share.to(device=t.device, dtype=t.dtype).reshape(shape)
        return self.take(t, dim) * share

    def incoming(self, t: torch.Tensor, dim: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """A layer's incoming weights `t` (rows along `dim`): random rows (normal, with the std of
        `t`) for the new units nothing reads (share 0: a unit's single copy under split "zero"),
        copied rows for the others (their columns cancel only if they compute their unit's
        activation). Function-preserving; the old units' rows are unchanged."""
        out = self.take(t, dim)
        silent = torch.nonzero(self.share[self.width - self.added:] == 0).flatten()
        if len(silent) and t.numel() > 1:
            silent = silent + (self.width - self.added)
            shape = list(t.shape)
            shape[dim] = len(silent)
            fresh = torch.randn(shape, generator=generator, dtype=torch.float64) * \
                t.detach().double().std().item()
            out.index_copy_(dim, silent.to(out.device), fresh.to(out))
        return out

    def take_blocks(self, t: torch.Tensor, blocks: int) -> torch.Tensor:
        """`t` whose dim 0 is `blocks` consecutive blocks of the units (an LSTM's four gates, an
        (h, c) pair), each block indexed by the units."""
        old = t.shape[0] // blocks
        return self.take(t.reshape(blocks, old, *t.shape[1:]), 1).reshape(
            blocks * self.width, *t.shape[1:])

    def spread_block(self, t: torch.Tensor, start: int, width: int) -> torch.Tensor:
        """`t` (out, in) whose columns start..start+width-1 read the `width` old units and whose
        other columns read other inputs (kept): that block spread, the rest unchanged."""
        block = self.spread(t[:, start:start + width], 1)
        return torch.cat([t[:, :start], block, t[:, start + width:]], dim=1)


#: size of a copy's (negative) share of its unit's outgoing weights under split="signed": small,
#: so the pair's outgoing weights (1 + s, -s) barely scale the unit's effective learning rate
#: (at 0.5 the hnet under SGD became unstable); any s > 0 flips the sign Adam cannot normalise
SIGNED_SHARE = 0.05


def identity_map(width: int) -> UnitMap:
    return UnitMap(torch.arange(width), torch.ones(width, dtype=torch.float64), exact=True)


def widen_map(width: int, new_width: int, generator: torch.Generator | None = None,
              split: str = "signed") -> UnitMap:
    """Units 0..width-1 stay; each new unit copies an old unit, every old unit once (in random
    order) before any twice. How a unit's outgoing weights are shared among its copies (every
    split preserves the function):

    "signed" (default): its first copy gets -SIGNED_SHARE x u (u uniform in [0.5, 1.5]), later
    copies 0, the unit the rest. A copy's incoming gradient is then of the opposite sign to its
    unit's, which no per-coordinate normalisation (Adam) cancels: they learn apart at once.
    "zero": copies get 0 (the old units are untouched, exactly); a copy learns apart once its
    outgoing weights have moved. With `UnitMap.incoming`, such units get random incoming weights.
    "random": positive shares drawn in [0.5, 1.5], normalised; "equal": 1/count each (Net2Net).
    Both leave copies twins under Adam (see the module docstring).
    """
    if new_width < width:
        raise ValueError(f"widen_map cannot narrow {width} -> {new_width}: use shrink_map")
    if split not in ("zero", "signed", "random", "equal"):
        raise ValueError(f"split must be 'zero', 'signed', 'random' or 'equal', got {split!r}")
    added = new_width - width
    rounds = -(-added // width) if width else 0
    extra = torch.cat([torch.arange(width)] + [torch.randperm(width, generator=generator)
                                               for _ in range(rounds)])[width:new_width]
    source = torch.cat([torch.arange(width), extra])
    if split == "zero":
        # uniform draws centred over each unit's new copies: 0 for a single copy, zero-sum else
        draw = torch.rand(added, generator=generator, dtype=torch.float64) - 0.5
        total = torch.zeros(width, dtype=torch.float64).index_add_(0, extra, draw)
        count = torch.bincount(extra, minlength=width).clamp(min=1)
        share = torch.cat([torch.ones(width, dtype=torch.float64), draw - (total / count)[extra]])
        return UnitMap(source, share, exact=True, added=added)
    if split == "signed":
        # a unit's first copy gets -SIGNED_SHARE x u (u in [0.5, 1.5]), later ones (past doubling)
        # 0; the unit keeps the rest, so its copies' columns sum to its old one
        first = torch.arange(added) < width
        copy_share = -SIGNED_SHARE * (0.5 + torch.rand(added, generator=generator,
                                                       dtype=torch.float64)) * first
        keep = 1.0 - torch.zeros(width, dtype=torch.float64).index_add_(0, extra, copy_share)
        return UnitMap(source, torch.cat([keep, copy_share]), exact=True, added=added)
    if split == "equal":
        weight = torch.ones(new_width, dtype=torch.float64)
    else:
        weight = 0.5 + torch.rand(new_width, generator=generator, dtype=torch.float64)
        weight[:width][torch.bincount(source, minlength=width) == 1] = 1.0
    total = torch.zeros(width, dtype=torch.float64).index_add_(0, source, weight)
    return UnitMap(source, weight / total[source], exact=True, added=added)


def shrink_map(importance: torch.Tensor, new_width: int) -> UnitMap:
    """Keep the `new_width` most important units (in their old order); not function-preserving."""
    width = len(importance)
    if not 0 < new_width <= width:
        raise ValueError(f"shrink_map keeps 1..{width} units, got {new_width}")
    keep = torch.topk(importance.detach().double().cpu(), new_width).indices.sort().values
    return UnitMap(keep, torch.ones(new_width, dtype=torch.float64), exact=new_width == width)


def unit_importance(weight_in: torch.Tensor, weight_out: torch.Tensor,
                    bias_in: torch.Tensor | None = None) -> torch.Tensor:
    """||incoming weights (and bias) of unit j|| x ||outgoing weights of unit j||."""
    incoming = weight_in.detach().double()
    if bias_in is not None:
        incoming = torch.cat([incoming, bias_in.detach().double()[:, None]], dim=1)
    return incoming.norm(dim=1) * weight_out.detach().double().norm(dim=0)


def resize_map(width: int, new_width: int, importance: torch.Tensor | None = None,
               generator: torch.Generator | None = None, split: str = "signed") -> UnitMap:
    """Widen (function-preserving, `widen_map`'s `split`), keep, or shrink by `importance`
    (needed to shrink)."""
    if new_width == width:
        return identity_map(width)
    if new_width > width:
        return widen_map(width, new_width, generator, split)
    if importance is None:
        raise ValueError("shrinking needs the units' importance")
    return shrink_map(importance, new_width)


def resize_linear(layer: nn.Linear, reader: nn.Linear, new_width: int,
                  generator: torch.Generator | None = None) -> tuple[nn.Linear, nn.Linear, UnitMap]:
    """`layer`'s output units resized to `new_width`, and `reader` (which reads them) to match."""
    importance = unit_importance(layer.weight, reader.weight, layer.bias)
    umap = resize_map(layer.out_features, new_width, importance, generator)
    new_layer = nn.Linear(layer.in_features, new_width, bias=layer.bias is not None)
    new_reader = nn.Linear(new_width, reader.out_features, bias=reader.bias is not None)
    with torch.no_grad():
        new_layer.weight.copy_(umap.take(layer.weight, 0))
        if layer.bias is not None:
            new_layer.bias.copy_(umap.take(layer.bias, 0))
        new_reader.weight.copy_(umap.spread(reader.weight, 1))
        if reader.bias is not None:
            new_reader.bias.copy_(reader.bias)
    return new_layer.to(layer.weight.device), new_reader.to(reader.weight.device), umap


def resize_layer(model: dict[str, torch.Tensor], prefix: str, reader: str, new_width: int,
                 generator: torch.Generator | None = None) -> UnitMap:
    """Resize the units of the dense layer `prefix` (`prefix.weight` (out, in), `prefix.bias`) in
    the state dict `model`, in place, and the weight `reader` whose columns read them. Widening
    gives new units random incoming weights and zero outgoing weights (exact; the best measured,
    see the module docstring); narrowing keeps the most important units. Anything else indexed
    by the units is the caller's (`UnitMap.take`: new units' entries are copies of a unit's)."""
    w_in, b_in = model[f"{prefix}.weight"], model[f"{prefix}.bias"]
    importance = unit_importance(w_in, model[reader], b_in)
    umap = resize_map(len(b_in), new_width, importance, generator, split="zero")
    model[f"{prefix}.weight"] = umap.incoming(w_in, 0, generator)
    model[f"{prefix}.bias"] = umap.take(b_in)
    model[reader] = umap.spread(model[reader], 1)
    return umap


def resize_lstm_cell(model: dict[str, torch.Tensor], prefix: str, readers: dict[str, int],
                     new_width: int, generator: torch.Generator | None = None) -> UnitMap:
    """Resize the hidden units of the `nn.LSTMCell` named `prefix` in the state dict `model`, in
    place, and every tensor that reads its h.

    `readers` maps the state-dict key of each weight (out, in) that reads h to the column where h
    starts in its input (0 when h is all it reads). A new unit copies a unit's rows in all four
    gate blocks (weight_ih, weight_hh, both biases), with zero outgoing weights (`widen_map`); the
    recurrent matrix weight_hh itself reads h, so its columns are spread like every reader's.
    With the (h, c) state taken by the returned map (zeros stay zeros), a widened cell computes
    the same h for the old units and copies of them for the new ones, and every reader the same
    sum: function-preserving. Narrowing keeps the units with the largest incoming (all gates) x
    outgoing (readers and weight_hh) weights.
    Anything else indexed by the units (a stored state, a layer producing an initial state) is
    the caller's: `UnitMap.take` / `take_blocks`."""
    w_ih, w_hh = model[f"{prefix}.weight_ih"], model[f"{prefix}.weight_hh"]
    b_ih, b_hh = model[f"{prefix}.bias_ih"], model[f"{prefix}.bias_hh"]
    width = w_hh.shape[1]

    def per_unit(t: torch.Tensor) -> torch.Tensor:      # (4H, ...) -> (H, 4 * ...)
        return t.reshape(4, width, -1).transpose(0, 1).reshape(width, -1)

    incoming = torch.cat([per_unit(w_ih), per_unit(w_hh), per_unit(b_ih), per_unit(b_hh)], 1)
    outgoing = torch.cat([*(model[key][:, start:start + width] for key, start in readers.items()),
                          w_hh], 0)
    umap = resize_map(width, new_width, unit_importance(incoming, outgoing), generator)
    model[f"{prefix}.weight_ih"] = umap.take_blocks(w_ih, 4)
    model[f"{prefix}.weight_hh"] = umap.spread(umap.take_blocks(w_hh, 4), 1)
    model[f"{prefix}.bias_ih"] = umap.take_blocks(b_ih, 4)
    model[f"{prefix}.bias_hh"] = umap.take_blocks(b_hh, 4)
    for key, start in readers.items():
        model[key] = umap.spread_block(model[key], start, width)
    return umap


def input_importance(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """||weight column i|| x rms of input i over `inputs` (N, in)."""
    rms = inputs.detach().double().pow(2).mean(dim=0).sqrt()
    return weight.detach().double().norm(dim=0) * rms


def resize_inputs(weight: torch.Tensor, start: int, width: int, new_width: int,
                  importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize the block of input columns start..start+width-1 of `weight` to `new_width`.

    Growing appends zero columns at the end of the block (function-preserving whatever the new
    inputs hold); shrinking keeps the block's most important columns (`importance`, one per column
    of the block). Returns the new weight and `keep`: for each new column of the block, the old
    block column it came from, or -1 for a new (zero) column; apply it to the inputs with
    `resize_input_values`.
    """
    block = weight[:, start:start + width]
    if new_width >= width:
        keep = torch.cat([torch.arange(width), torch.full((new_width - width,), -1)])
        zeros = weight.new_zeros(weight.shape[0], new_width - width)
        new_block = torch.cat([block, zeros], dim=1)
    else:
        if importance is None:
            raise ValueError("shrinking inputs needs their importance")
        keep = torch.topk(importance.detach().double().cpu(), new_width).indices.sort().values
        new_block = block.index_select(1, keep.to(weight.device))
    new = torch.cat([weight[:, :start], new_block, weight[:, start + width:]], dim=1)
    return new, keep


def resize_input_values(values: torch.Tensor, keep: torch.Tensor, fill: torch.Tensor,
                        dim: int = -1) -> torch.Tensor:
    """Input values (e.g. embeddings) to match `resize_inputs`: kept entries are copied, new
    entries (keep == -1) come from `fill`, of the output's shape (only its new entries are used)."""
    dim = dim % values.dim()
    old = keep >= 0
    index = keep.clamp(min=0).to(values.device)
    out = fill.clone()
    picked = values.index_select(dim, index)
    mask_shape = [1] * values.dim()
    mask_shape[dim] = len(keep)
    mask = old.to(values.device).reshape(mask_shape).expand_as(out)
    return torch.where(mask, picked, out)


def kept_optimizer_state(module: nn.Module, optimizer_state: dict,
                         old_model: dict[str, torch.Tensor],
                         new_model: dict[str, torch.Tensor]) -> dict:
    """An optimizer state dict for `module`'s parameters after resizing: the moments of every
    parameter whose shape is unchanged are kept, those of resized ones start afresh."""
    names = [name for name, _ in module.named_parameters()]
    return {**optimizer_state,
            "state": {i: s for i, s in optimizer_state["state"].items()
                      if new_model[names[i]].shape == old_model[names[i]].shape}}


# -- deepening and norm-preserving widening -------------------------------------------------------
#
# Deepening (Net2DeeperNet, Chen et al. 2016): a new layer with identity weights and zero bias goes
# right after an activation sigma, so it computes sigma(I h + 0) = sigma(h) where h = sigma(z).
# That equals h exactly (no rounding: I h adds only exact zeros) when sigma(sigma(z)) = sigma(z),
# i.e. sigma is idempotent: ReLU (its outputs are non-negative, where ReLU is the identity), hard
# thresholds, clamps. For tanh or sigmoid it is NOT exact (tanh(tanh(z)) != tanh(z)): there the
# inserted layer changes the function and only approximates it where sigma is near-linear.


def identity_linear(width: int, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> nn.Linear:
    """A `width -> width` linear layer computing its input exactly (weight I, bias 0)."""
    layer = nn.Linear(width, width, device=device, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(width, device=device, dtype=dtype))
        layer.bias.zero_()
    return layer


def widen_homogeneous(layer: nn.Linear, reader: nn.Linear | None, new_width: int,
                      generator: torch.Generator | None = None
                      ) -> tuple[nn.Linear, nn.Linear | None, UnitMap]:
    """Widen `layer` to `new_width` units keeping every sum of squares over its units.

    For a positively homogeneous activation (sigma(c z) = c sigma(z) for c > 0: ReLU, leaky ReLU),
    copy j of unit s takes sqrt(share_j) of s's incoming weights and bias, so its activation is
    sqrt(share_j) h_s; the shares of s's copies sum to one, so sum_j h_j^2 (the layer's squared
    norm, forward-forward's goodness) is unchanged, and the reader, whose columns are scaled by
    sqrt(share_j) too, receives sum_j share_j w_s h_s = w_s h_s: the same input. `reader` may be
    None (nothing reads the layer)."""
    umap = widen_map(layer.out_features, new_width, generator, split="random")
    root = umap.share.sqrt()
    new_layer = nn.Linear(layer.in_features, new_width, bias=layer.bias is not None)
    with torch.no_grad():
        scale = root.to(layer.weight)
        new_layer.weight.copy_(umap.take(layer.weight, 0) * scale[:, None])
        if layer.bias is not None:
            new_layer.bias.copy_(umap.take(layer.bias, 0) * scale)
    new_layer = new_layer.to(layer.weight.device)
    if reader is None:
        return new_layer, None, umap
    new_reader = nn.Linear(new_width, reader.out_features, bias=reader.bias is not None)
    with torch.no_grad():
        new_reader.weight.copy_(umap.take(reader.weight, 1) * root.to(reader.weight)[None, :])
        if reader.bias is not None:
            new_reader.bias.copy_(reader.bias)
    return new_layer, new_reader.to(reader.weight.device), umap
