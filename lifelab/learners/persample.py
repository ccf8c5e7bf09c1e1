"""Per-sample gradient statistics: sum_n |g_n|^p for every parameter, exact and batched.

Fisher-type importances need the gradient of each sample's own loss, squared (EWC, EWC++) or in
absolute value (MAS), summed over samples. The square of a mini-batch's *mean* gradient is not
that. For a linear layer z_n = W a_n + b, the gradient of sample n's loss is d_n a_n^T (d_n the
loss's gradient with respect to z_n), so

    sum_n |d_n a_n^T|^p  =  (|d|^p)^T (|a|^p)         sum_n |d_n|^p  (the bias)

which one forward and one backward of the whole batch give: `LayerCapture` records each layer's
input a and output gradient d, and two matrix products finish the job. The same capture covers
the layers of the conv backbones:
- `nn.Conv2d` (groups 1, zero padding): sample n's weight gradient is D_n A_n^T, A_n the
  unfolded input patches (C_in k k, L positions) and D_n (C_out, L); it sums over positions, so
  it does not factor like the linear one: it is formed per sample (in slices that bound memory),
  raised to p and summed, one batched matrix product per slice. The bias gradient is D_n's
  row sums.
- batch norm in eval mode: y = gamma * x_hat + beta with x_hat from the running statistics, so
  sample n's gradients are sum over positions of d_n * x_hat_n (gamma) and of d_n (beta).

This holds when every sample passes through each layer once and samples do not interact, which
is why `grad_power_sum` runs the model in eval mode (restored after): batch norm then normalises
with its running statistics (which this pass leaves untouched) instead of the batch's. Running
statistics are buffers, not parameters: they get no importance and are not regularised; batch
norm's weight and bias are parameters like any other. A model with trainable parameters outside
these layers, a layer called more than once, or an activation modified in place after it was
recorded falls back to `torch.func` (vmap over per-sample gradients): exact, slower.

`grad_power_sum` is the entry point (benchmarks/regularizers.py times it against a naive vmap
and the mini-batch approximation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

#: per-sample losses: called with a chunk of the input tensors (rows = samples), returns (B,)
LossFn = Callable[..., torch.Tensor]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
SLICE_ELEMENTS = 1 << 24       # per-sample conv gradients formed at once (64 MB in float32)


class LayerCapture:
    """While active, records the inputs of each supported layer and the gradients reaching its
    outputs (`kinds`: linear, 2-D convolution and batch norm layers).

    With `track_grads=True` the output gradients are taken from whatever backward runs (e.g. a
    training step's); otherwise `outputs` holds the output tensors for `torch.autograd.grad`.
    """

    kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d, *_BATCH_NORMS)

    def __init__(self, model: nn.Module, track_grads: bool = False):
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, self.kinds)}
        self.track_grads = track_grads
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self.grads: dict[str, list[torch.Tensor]] = {}
        self._versions: dict[str, tuple[int, int]] = {}   # (input, output) versions at the hook
        self._handles: list = []

    def __enter__(self) -> LayerCapture:
        self.inputs, self.outputs, self.grads, self._versions = {}, {}, {}, {}
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not output.requires_grad:
                return
            self.inputs.setdefault(name, []).append(args[0].detach())
            self._versions[name] = (args[0]._version, output._version)
            if self.track_grads:
                output.register_hook(
                    lambda grad: self.grads.setdefault(name, []).append(grad.detach()))
            else:
                self.outputs.setdefault(name, []).append(output)
        return hook

    def exact(self) -> bool:
        """Whether the identities hold for what was recorded: one call per layer, nothing
        modified in place since, and each layer of a form they cover."""
        for name, xs in self.inputs.items():
            module, x = self.layers[name], xs[0]
            unchanged = (x._version, self._output(name)._version) == self._versions[name] \
                if self._output(name) is not None else x._version == self._versions[name][0]
            if len(xs) != 1 or not unchanged or not _covered(module, x):
                return False
        return True

    def _output(self, name: str) -> torch.Tensor | None:
        outs = self.outputs.get(name)
        return outs[0] if outs else None

    def power_sums(self, grads: dict[str, torch.Tensor], power: float, scale: float = 1.0,
                   ) -> dict[str, torch.Tensor]:
        """sum_n |scale * g_n|^p for each captured parameter, from inputs and output gradients."""
        out = {}
        for name, module in self.layers.items():
            if name not in grads:          # the layer did not run (or got no gradient)
                continue
            a = self.inputs[name][0]
            d = grads[name] * scale if scale != 1.0 else grads[name]
            prefix = f"{name}." if name else ""
            want_w = module.weight is not None and module.weight.requires_grad
            want_b = module.bias is not None and module.bias.requires_grad
            sums = _layer_sums(module, a, d, power, want_w, want_b)
            out.update({prefix + key: value for key, value in sums.items()})
        return out

    def tracked_power_sums(self, power: float, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """`power_sums` from the gradients a backward delivered (track_grads=True)."""
        grads = {name: gs[0] for name, gs in self.grads.items() if len(gs) == 1}
        return self.power_sums(grads, power, scale)


class LinearCapture(LayerCapture):
    """`LayerCapture` of the `nn.Linear` layers only (cheap to keep on during training)."""

    kinds = (nn.Linear,)


def _covered(module: nn.Module, x: torch.Tensor) -> bool:
    if isinstance(module, nn.Linear):
        return x.dim() == 2
    if isinstance(module, nn.Conv2d):
        return x.dim() == 4 and module.groups == 1 and module.padding_mode == "zeros" \
            and isinstance(module.padding, tuple)        # not 'same' / 'valid' strings
    return (not module.training and module.running_mean is not None
            and x.dim() in (2, 4))                       # batch norm on running statistics


def _layer_sums(module: nn.Module, a: torch.Tensor, d: torch.Tensor, power: float,
                want_weight: bool, want_bias: bool) -> dict[str, torch.Tensor]:
    """sum_n |g_n|^p of one layer's weight and bias from its input a and output gradient d."""
    out = {}
    if isinstance(module, nn.Linear):
        d_p = _abs_pow(d, power)
        if want_weight:
            out["weight"] = d_p.T @ _abs_pow(a, power)
        if want_bias:
            out["bias"] = d_p.sum(0)
    elif isinstance(module, nn.Conv2d):
        if want_weight:
            out["weight"] = _conv_weight_sum(module, a, d, power)
        if want_bias:
            out["bias"] = _abs_pow(d.sum((2, 3)), power).sum(0)
    else:                                            # batch norm on its running statistics
        over = tuple(range(2, a.dim()))              # positions; none for (B, C) inputs
        if want_weight:
            shape = (1, -1) + (1,) * (a.dim() - 2)
            x_hat = (a - module.running_mean.reshape(shape)) * torch.rsqrt(
                module.running_var.reshape(shape) + module.eps)
            g = d * x_hat
            out["weight"] = _abs_pow(g.sum(over) if over else g, power).sum(0)
        if want_bias:
            out["bias"] = _abs_pow(d.sum(over) if over else d, power).sum(0)
    return out


def _conv_weight_sum(conv: nn.Conv2d, a: torch.Tensor, d: torch.Tensor,
                     power: float) -> torch.Tensor:
    """sum_n |D_n A_n^T|^p for a convolution's weight, formed a slice of samples at a time."""
    patches = F.unfold(a, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    d = d.reshape(len(d), d.shape[1], -1)                                 # (B, C_out, L)
    step = max(1, SLICE_ELEMENTS // (d.shape[1] * patches.shape[1]))
    total = torch.zeros(d.shape[1], patches.shape[1], dtype=d.dtype, device=d.device)
    for s in range(0, len(d), step):
        g = torch.bmm(d[s:s + step], patches[s:s + step].transpose(1, 2))
        total += _abs_pow(g, power).sum(0)
    return total.reshape(conv.weight.shape)


def _abs_pow(t: torch.Tensor, power: float) -> torch.Tensor:
    if power == 2:
        return t * t
    if power == 1:
        return t.abs()
    return t.abs().pow(power)


def linear_only(model: nn.Module) -> bool:
    """Every trainable parameter belongs to an `nn.Linear` (the identity then covers them)."""
    return _only(model, (nn.Linear,))


def identity_covers(model: nn.Module) -> bool:
    """Every trainable parameter belongs to a layer `LayerCapture` has an identity for."""
    return _only(model, LayerCapture.kinds)


def _only(model: nn.Module, kinds: tuple[type, ...]) -> bool:
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own and not isinstance(module, kinds):
            return False
    return True


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """The model in eval mode for a statistics pass; each module's mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def grad_power_sum(model: nn.Module, loss_fn: LossFn, inputs: Sequence[torch.Tensor],
                   power: float = 2.0, chunk_size: int | None = None,
                   ) -> dict[str, torch.Tensor]:
    """sum over samples n of |d loss_n / d theta|^power, for every trainable parameter.

    `loss_fn(*chunk)` gets rows of `inputs` (the same rows of each tensor) and returns the
    per-sample losses (B,), running `model` on them; a sample's loss may depend only on its own
    rows, deterministically (draw random numbers beforehand and pass them in as an input).
    The model runs in eval mode (see the module docstring). Parameters no loss reaches get
    zeros. `chunk_size` samples go through at once (default: 1024 for linear-only models, 64
    otherwise, whose activations are larger).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    n = len(inputs[0])
    fast = identity_covers(model)
    chunk_size = chunk_size or (1024 if linear_only(model) else 64)
    with eval_mode(model):
        for start in range(0, n, chunk_size):
            chunk = [t[start:start + chunk_size] for t in inputs]
            sums = _identity_chunk(model, loss_fn, chunk, power) if fast else None
            if sums is None:                   # the identity does not apply to what ran
                fast = False
                sums = _vmap_chunk(model, loss_fn, chunk, power)
            for name, value in sums.items():
                total[name] += value
    return total


def _identity_chunk(model: nn.Module, loss_fn: LossFn, chunk: list[torch.Tensor],
                    power: float) -> dict[str, torch.Tensor] | None:
    with LayerCapture(model) as capture:
        losses = loss_fn(*chunk)
    if not capture.exact():
        return None
    names = list(capture.outputs)
    outputs = [capture.outputs[name][0] for name in names]
    grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
    return capture.power_sums({name: g for name, g in zip(names, grads, strict=True)
                               if g is not None}, power)


class _LossModule(nn.Module):
    """Lets torch.func swap `model`'s parameters while `loss_fn` runs it."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *row: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(*(t.unsqueeze(0) for t in row))[0]


def _vmap_chunk(model: nn.Module, loss_fn: LossFn, chunk: list[torch.Tensor],
                power: float) -> dict[str, torch.Tensor]:
    wrapper = _LossModule(model, loss_fn)
    params = {f"model.{n}": p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def one(p: dict, *row: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(wrapper, p, row)

    grads = torch.func.vmap(torch.func.grad(one), in_dims=(None, *[0] * len(chunk)))(
        params, *chunk)
    return {n[len("model."):]: _abs_pow(g, power).sum(0) for n, g in grads.items()}
