"""Parameter importances computed once a task is learned (EWC, MAS, SCP).

Each function takes the model, `outputs(x)` (the logits of the units the finished task uses)
and that task's samples, and returns one tensor per trainable parameter, named as in
`model.named_parameters()`. Per-sample statistics come from `lifelab.learners.persample`, exact
for linear, convolution and batch-norm layers alike. All three run the model in eval mode: batch
norm uses its running statistics (not updated here, and not regularised: they are buffers);
its weight and bias get importances like any parameter.

- `fisher_diagonal`: (1/N) sum_n (d log p(y_n|x_n) / d theta)^2, with y_n drawn from the model's
  own predictive distribution (the true Fisher, default) or the dataset label (the empirical one).
- `mas_importance`: (1/N) sum_n |d ||f(x_n)||^2 / d theta| (Aljundi et al. 2018), no labels.
- `scp_importance`: (1/L) sum_l (d xi_l^T mean_n f(x_n) / d theta)^2 over L random unit
  directions xi_l (Kolouri et al. 2020): the sliced Cramer distance between the distributions of
  outputs before and after a change, to second order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from lifelab.learners.persample import eval_mode, grad_power_sum

Outputs = Callable[[torch.Tensor], torch.Tensor]
FISHER_KINDS = ("true", "empirical")


def fisher_diagonal(model: nn.Module, outputs: Outputs, x: torch.Tensor,
                    y: torch.Tensor | None = None, kind: str = "true",
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The diagonal of the Fisher information of p(y|x) = softmax(outputs(x)), averaged over x."""
    if kind == "empirical":
        if y is None:
            raise ValueError("the empirical Fisher needs the labels y")

        def nll(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(outputs(xb), yb, reduction="none")

        sums = grad_power_sum(model, nll, (x, y), power=2)
    elif kind == "true":
        # One uniform number per sample, drawn here, picks its label by inverse CDF inside the
        # loss: the per-sample loss stays a deterministic function of its own inputs.
        u = torch.rand(len(x), generator=generator).to(x.device)

        def sampled_nll(xb: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
            logits = outputs(xb)
            cdf = torch.softmax(logits.detach(), dim=1).cumsum(dim=1)
            yb = (cdf < ub.unsqueeze(1)).sum(dim=1).clamp(max=logits.shape[1] - 1)
            return F.cross_entropy(logits, yb, reduction="none")

        sums = grad_power_sum(model, sampled_nll, (x, u), power=2)
    else:
        raise ValueError(f"fisher kind {kind!r} is unknown: use one of {', '.join(FISHER_KINDS)}")
    return {name: s / len(x) for name, s in sums.items()}


def mas_importance(model: nn.Module, outputs: Outputs, x: torch.Tensor,
                   ) -> dict[str, torch.Tensor]:
    """Mean absolute per-sample gradient of the squared L2 norm of the outputs."""
    def squared_norm(xb: torch.Tensor) -> torch.Tensor:
        return outputs(xb).pow(2).sum(dim=1)

    sums = grad_power_sum(model, squared_norm, (x,), power=1)
    return {name: s / len(x) for name, s in sums.items()}


def random_directions(count: int, dim: int, generator: torch.Generator | None = None,
                      ) -> torch.Tensor:
    """`count` directions drawn uniformly on the unit sphere of R^dim, as rows."""
    xi = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return (xi / xi.norm(dim=1, keepdim=True)).float()


def scp_importance(model: nn.Module, outputs: Outputs, x: torch.Tensor,
                   directions: torch.Tensor, chunk_size: int = 1024) -> dict[str, torch.Tensor]:
    """(1/L) sum_l (grad_theta xi_l^T mean_n f(x_n))^2 for the rows xi_l of `directions` (L, C).

    With J the Jacobian of the mean output (C x P), the sum is diag(J^T M J), M = xi^T xi / L:
    C backward passes instead of L, exact for any L.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    jacobian: dict[str, torch.Tensor] | None = None
    with eval_mode(model):
        for start in range(0, len(x), chunk_size):
            total = outputs(x[start:start + chunk_size]).sum(dim=0)         # (C,)
            eye = torch.eye(len(total), device=total.device, dtype=total.dtype)
            grads = torch.autograd.grad(total, list(params.values()), grad_outputs=eye,
                                        is_grads_batched=True, allow_unused=True)
            if jacobian is None:
                jacobian = {n: torch.zeros(len(total), *p.shape, device=p.device,
                                           dtype=p.dtype) for n, p in params.items()}
            for name, g in zip(params, grads, strict=True):
                if g is not None:
                    jacobian[name] += g
    assert jacobian is not None, "scp_importance needs at least one sample"
    directions = directions.to(x.device)
    m = directions.T @ directions / len(directions)                      # (C, C)
    out = {}
    for name, jac in jacobian.items():
        jac = jac / len(x)
        out[name] = (jac * torch.tensordot(m, jac, dims=1)).sum(dim=0)
    return out
