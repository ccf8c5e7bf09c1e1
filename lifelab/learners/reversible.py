"""Reversible residual MLPs: training memory that stays flat as depth grows.

A block splits its input in halves x = [x1, x2] and computes (RevNet, Gomez et al. 2017)

    y1 = x1 + F(x2)        y2 = x2 + G(y1)

which inverts exactly: x2 = y2 - G(y1), x1 = y1 - F(x2). F and G are small MLPs (linear, ReLU,
linear on a half). `ReversibleStack` runs each block through an autograd Function that keeps
nothing for backward but, in the last block, the stack's *output*; backward walks the blocks in
reverse, each recomputing its input from its output and back-propagating through itself alone,
and hands that input down to the block below. Activation memory is therefore one block's worth
whatever the depth, for one extra forward pass plus the inverse (1.3-1.9x the step time of
ordinary autograd in benchmarks/reversible.py); each block's parameter gradients go to .grad as
soon as it is done, so gradient buffers do not pile up either.

The inverse is exact in exact arithmetic (float64 gradients match ordinary autograd to 1e-14).
In float32 the reconstructed activations drift by rounding, more the deeper the stack: measured
gradient error against float64 of 4e-7 at depth 8, 3e-4 at 32 and 9e-4 at 64 (ordinary float32
autograd: 4e-7, 4e-7, 1.3e-4). F and G must be deterministic (no dropout, no batch statistics):
the recomputation must reproduce the forward.

`SavedTensorMeter` measures what autograd keeps for backward (live and peak bytes, parameters
excluded); tests/test_reversible.py and benchmarks/reversible.py use it.

The `reversible` learner: input projection -> `depth` reversible blocks of `width` units -> head,
on the ordinary streams (metrics of lifelab.learners.base). Config keys: `width` (even), `depth`,
`memory_saving` (false trains the very same network with ordinary autograd, for comparison).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from lifelab.errors import ConfigError
from lifelab.learners.base import ContinualLearner, Param


class ReversibleBlock(nn.Module):
    """One additive coupling of `width` features (even): y1 = x1 + F(x2), y2 = x2 + G(y1)."""

    def __init__(self, width: int):
        super().__init__()
        if width < 2 or width % 2:
            raise ValueError(f"a reversible block splits its width in halves: use an even width "
                             f">= 2, got {width}")
        half = width // 2
        self.f = nn.Sequential(nn.Linear(half, half), nn.ReLU(), nn.Linear(half, half))
        self.g = nn.Sequential(nn.Linear(half, half), nn.ReLU(), nn.Linear(half, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        y1 = x1 + self.f(x2)
        return torch.cat([y1, x2 + self.g(y1)], dim=-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y.chunk(2, dim=-1)
        x2 = y2 - self.g(y1)
        return torch.cat([y1 - self.f(x2), x2], dim=-1)


class _Tape:
    """Hands each block, during backward, its output as recomputed by the block above it."""

    def __init__(self):
        self.output: torch.Tensor | None = None


class _ReversibleBlockFunction(torch.autograd.Function):
    """One block run without a graph. Only the stack's last block saves its output; in
    backward every block reconstructs its input from its output, back-propagates through
    itself alone and passes the input down the tape as the next block's output. Each block
    returns its own parameters' gradients, so autograd adds them to .grad block by block."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: ReversibleBlock, tape: _Tape, last: bool,
                *params: torch.Tensor):
        ctx.block, ctx.tape, ctx.last = block, tape, last
        y = block(x)                        # autograd.Function.forward runs without a graph
        if last:
            ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        y = ctx.saved_tensors[0] if ctx.last else ctx.tape.output
        ctx.tape.output = None
        with torch.no_grad():
            x = ctx.block.inverse(y)
        # a graph of this one block only, freed on return; on detached aliases of the
        # parameters, so hooks on the parameters fire once, in the outer graph, not here too
        params = {name: p.detach().requires_grad_(p.requires_grad)
                  for name, p in ctx.block.named_parameters()}
        trainable = [name for name, p in params.items() if p.requires_grad]
        with torch.enable_grad():
            x.requires_grad_()
            out = torch.func.functional_call(ctx.block, params, (x,))
            grad_x, *grad_p = torch.autograd.grad(out, [x, *(params[n] for n in trainable)],
                                                  grad_y)
        ctx.tape.output = x.detach()
        by_name = dict(zip(trainable, grad_p, strict=True))
        return (grad_x if ctx.needs_input_grad[0] else None), None, None, None, *(
            by_name.get(name) for name in params)


class ReversibleStack(nn.Module):
    """`depth` reversible blocks. memory_saving=True (the point) recomputes activations in
    backward; False runs the same blocks under ordinary autograd, which stores them."""

    def __init__(self, width: int, depth: int, memory_saving: bool = True):
        super().__init__()
        if depth < 1:
            raise ValueError(f"a reversible stack needs depth >= 1, got {depth}")
        self.blocks = nn.ModuleList(ReversibleBlock(width) for _ in range(depth))
        self.memory_saving = memory_saving

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        needs_graph = x.requires_grad or any(p.requires_grad for p in self.parameters())
        if not (self.memory_saving and torch.is_grad_enabled() and needs_graph):
            for block in self.blocks:
                x = block(x)
            return x
        tape, last = _Tape(), len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = _ReversibleBlockFunction.apply(x, block, tape, i == last, *block.parameters())
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for block in reversed(self.blocks):
            y = block.inverse(y)
        return y


class ReversibleMLP(nn.Module):
    """input projection -> ReversibleStack(width, depth) -> linear head."""

    def __init__(self, input_dim: int, width: int, depth: int, num_outputs: int,
                 memory_saving: bool = True):
        super().__init__()
        self.project = nn.Linear(input_dim, width)
        self.stack = ReversibleStack(width, depth, memory_saving)
        self.head = nn.Linear(width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stack(self.project(x)))


class SavedTensorMeter:
    """Bytes of the tensors autograd saves for backward while the meter is active: `live` now and
    `peak` so far. Counts each storage once (a tensor saved by two ops, or a view, is one buffer)
    and skips the storages of `exclude` (the parameters: they are memory either way)."""

    def __init__(self, exclude=()):
        self._skip = {p.untyped_storage().data_ptr() for p in exclude}
        self._refs: dict[int, int] = {}
        self.live = 0
        self.peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key in self._skip:
            return t
        if self._refs.get(key, 0) == 0:
            self.live += t.untyped_storage().nbytes()
            self.peak = max(self.peak, self.live)
        self._refs[key] = self._refs.get(key, 0) + 1
        return _Held(t, key, self)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Held) else packed

    def _release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= nbytes


class _Held:
    """A saved tensor that tells its meter when autograd frees it."""

    def __init__(self, tensor: torch.Tensor, key: int, meter: SavedTensorMeter):
        self.tensor, self.key, self.meter = tensor, key, meter
        self.nbytes = tensor.untyped_storage().nbytes()

    def __del__(self) -> None:
        self.meter._release(self.key, self.nbytes)


class Reversible(ContinualLearner):
    """Reversible additive-coupling blocks: training memory flat in depth (the continual loop)."""

    name = "reversible"
    params = {
        **{k: p for k, p in ContinualLearner.params.items() if k != "hidden"},
        "width": Param(128, int, positive=True, doc="units per reversible block (even)"),
        "depth": Param(4, int, positive=True, doc="reversible blocks"),
        "memory_saving": Param(True, bool, doc="recompute activations in backward (false: "
                                               "ordinary autograd, same network)"),
    }
    architecture_keys = ("width", "depth")

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        full = super().validate_config(config)
        if full["width"] % 2:
            raise ConfigError(f"reversible config 'width' must be even (each block splits it in "
                              f"halves), got {full['width']}")
        return full

    def build_model(self) -> nn.Module:
        return ReversibleMLP(self.stream.input_dim, self.config["width"], self.config["depth"],
                             self.stream.num_outputs, self.config["memory_saving"])
