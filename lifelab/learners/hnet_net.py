"""The hypernetwork's parts: the target MLP run on generated weights, the chunked hypernetwork,
the output regularizer with its hand-written backward, and task inference by entropy. The
learner that trains them is `lifelab.learners.hnet.HNet`; its docstring describes the method."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

#: standard deviation of freshly drawn task and chunk embeddings
EMB_STD = 1.0

class TargetMLP:
    """The target network's layout: an MLP run functionally on a flat generated weight vector
    (per layer: the (out, in) weight, then the bias)."""

    def __init__(self, sizes: list[int]):
        self.sizes = sizes
        self.shapes = list(zip(sizes[1:], sizes[:-1], strict=True))  # (out, in) per layer
        self.num_weights = sum(o * i + o for o, i in self.shapes)

    def layers(self, w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) views per layer of `w`, shape (..., num_weights)."""
        lead = w.shape[:-1]
        # one split (its backward is one cat), not a slice per tensor (a zero-fill each)
        parts = w.split([n for o, i in self.shapes for n in (o * i, o)], dim=-1)
        return [(parts[2 * k].reshape(*lead, o, i), parts[2 * k + 1])
                for k, (o, i) in enumerate(self.shapes)]

    def forward(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, out) of the network with weights `w` (num_weights,) on x (n, in)."""
        layers = self.layers(w)
        for k, (weight, bias) in enumerate(layers):
            x = F.linear(x, weight, bias)
            if k < len(layers) - 1:
                x = F.relu(x)
        return x

    def forward_many(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, n, out) of K networks `w` (K, num_weights) on the same x (n, in)."""
        layers = self.layers(w)
        h = x.expand(len(w), *x.shape)
        for k, (weight, bias) in enumerate(layers):
            h = torch.baddbmm(bias[:, None, :], h, weight.transpose(1, 2))
            if k < len(layers) - 1:
                h = F.relu(h)
        return h


class HyperNetwork(nn.Module):
    """Chunked hypernetwork: [task emb ; chunk emb] -> hidden layers (ReLU) -> one chunk.

    Parameters, in this order: `layers` (Linear), `chunk_emb` (chunks, chunk_emb_dim) and
    `task_emb` (task_emb_dim,), the embedding of the current task.
    """

    def __init__(self, num_weights: int, chunk_size: int, task_emb_dim: int, chunk_emb_dim: int,
                 hidden: list[int]):
        super().__init__()
        self.num_weights = num_weights
        self.chunk_size = chunk_size or num_weights
        self.num_chunks = math.ceil(num_weights / self.chunk_size)
        self.task_emb_dim = task_emb_dim
        sizes = [task_emb_dim + chunk_emb_dim, *hidden, self.chunk_size]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes, sizes[1:], strict=False))
        self.chunk_emb = nn.Parameter(torch.randn(self.num_chunks, chunk_emb_dim) * EMB_STD)
        self.task_emb = nn.Parameter(torch.randn(task_emb_dim) * EMB_STD)

    @torch.no_grad()
    def calibrate(self, std: float) -> None:
        """Data-free output init: the generated weights of the current task embedding get mean 0
        at every position of a chunk and standard deviation `std`. (ReLU features are positive,
        so by default all chunks share a large common pattern; in a target layer it makes whole
        rows of weights lean one way, which can kill every unit of a layer at once.)"""
        z = self.hidden(self.task_emb[None])[0]                        # (chunks, width)
        w, b = self.output_layer()
        spread = F.linear(z - z.mean(0), w).std() if len(z) > 1 else F.linear(z, w).std()
        w.mul_(std / spread.clamp(min=1e-12))
        b.copy_(-F.linear(z.mean(0), w) if len(z) > 1 else torch.zeros_like(b))

    def _get(self, params: dict[str, torch.Tensor] | None, name: str) -> torch.Tensor:
        if params is not None and name in params:
            return params[name]
        return self.get_parameter(name)

    def hidden(self, task_embs: torch.Tensor,
               params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Last hidden activations (K, chunks, width) for K task embeddings (K, task_emb_dim), in
        one batched pass (`params` overrides parameters by name, for functional calls)."""
        d = self.task_emb_dim
        w0, b0 = self._get(params, "layers.0.weight"), self._get(params, "layers.0.bias")
        chunk_emb = self._get(params, "chunk_emb")
        # layer 0 on [e ; c] = (e W_e^T) + (c W_c^T + b): K + chunks rows instead of K x chunks
        h = F.relu(F.linear(task_embs, w0[:, :d])[:, None, :]
                   + F.linear(chunk_emb, w0[:, d:], b0)[None, :, :])
        for k in range(1, len(self.layers) - 1):
            h = F.relu(F.linear(h, self._get(params, f"layers.{k}.weight"),
                                self._get(params, f"layers.{k}.bias")))
        return h

    def output_layer(self, params: dict[str, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        last = len(self.layers) - 1
        return (self._get(params, f"layers.{last}.weight"),
                self._get(params, f"layers.{last}.bias"))

    def generate(self, task_embs: torch.Tensor,
                 params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Target weights (K, num_weights) for K task embeddings: all chunks in one pass."""
        w, b = self.output_layer(params)
        chunks = F.linear(self.hidden(task_embs, params), w, b)      # (K, chunks, chunk_size)
        return chunks.flatten(1)[:, :self.num_weights]


class _FactoredDistance(torch.autograd.Function):
    """sum_t ||dZ_t W~^T + [Z*_t, 1] dW~^T||^2 from Gram matrices, with a hand-written backward
    that reuses the forward's products (5 matrix products of chunk_size x width^2 and 4 of
    rows x width^2, where autograd would take 9 and 5)."""

    @staticmethod
    def forward(ctx, dz, zs, gram_star, wt, wt_star):
        width = dz.shape[1]
        dwt = wt - wt_star
        s1 = dz.t() @ dz                                             # (width, width)
        cross = torch.cat([dz.t() @ zs, dz.sum(0)[:, None]], dim=1)   # dZ^T [Z*, 1]
        m1, m2, m3 = wt.t() @ wt, wt.t() @ dwt, dwt.t() @ dwt         # (width+1)^2 each
        total = (s1 * m1[:width, :width]).sum() + 2 * (cross * m2[:width]).sum() \
            + (gram_star * m3).sum()
        ctx.save_for_backward(dz, zs, wt, dwt, s1, cross, gram_star, m1, m2)
        return total

    @staticmethod
    def backward(ctx, grad):
        dz, zs, wt, dwt, s1, cross, gram_star, m1, m2 = ctx.saved_tensors
        width = dz.shape[1]
        grad_dz = grad_wt = None
        if ctx.needs_input_grad[0]:
            m2h = m2[:width]
            grad_dz = 2 * grad * (dz @ m1[:width, :width] + zs @ m2h[:, :width].t()
                                  + m2h[:, width])
        if ctx.needs_input_grad[3]:
            # d/dW~ of <S1~, W~^T W~> + 2 <C~, W~^T dW~> + <G*, dW~^T dW~>, S1~ and C~ padded
            padded = torch.zeros_like(m1)
            padded[:width, :width] = s1
            c_pad = torch.zeros_like(m1)
            c_pad[:width] = cross
            grad_wt = 2 * grad * (wt @ (padded + c_pad) + dwt @ (c_pad.t() + gram_star))
        return grad_dz, None, None, grad_wt, None


def output_regularizer(z: torch.Tensor, z_star: torch.Tensor, gram_star: torch.Tensor,
                       w: torch.Tensor, b: torch.Tensor, w_star: torch.Tensor,
                       b_star: torch.Tensor, num_weights: int) -> torch.Tensor:
    """Sum over K tasks of ||generated - target||^2, never forming the generated weights.

    z, z_star: last hidden activations (K, chunks, width) now and at the snapshot; gram_star: the
    sum over the K tasks of [z*, 1]^T [z*, 1] (width+1, width+1); w, b and w_star, b_star: the
    output layer now and at the snapshot; only the first `num_weights` outputs count.
    """
    width = z.shape[-1]
    dz = (z - z_star).reshape(-1, width)                      # (K * chunks, width)
    zs = z_star.reshape(-1, width)
    wt = torch.cat([w, b[:, None]], dim=1)                    # (chunk_size, width + 1)
    wt_star = torch.cat([w_star, b_star[:, None]], dim=1)
    total = _FactoredDistance.apply(dz, zs, gram_star, wt, wt_star)
    pad = z.shape[1] * w.shape[0] - num_weights                # unused outputs of the last chunk
    if pad > 0:
        keep = w.shape[0] - pad
        dwt = wt[keep:] - wt_star[keep:]
        last_dz, last_zs = z[:, -1] - z_star[:, -1], z_star[:, -1]
        unused = F.linear(last_dz, w[keep:]) + F.linear(last_zs, dwt[:, :width], dwt[:, -1])
        total = total - unused.pow(2).sum()
    return total


@torch.no_grad()
def augmented_gram(z: torch.Tensor) -> torch.Tensor:
    """[z, 1]^T [z, 1] summed over tasks and chunks, for z (K, chunks, width)."""
    flat = z.reshape(-1, z.shape[-1])
    za = torch.cat([flat, torch.ones_like(flat[:, :1])], dim=1)
    return za.t() @ za


def entropy_inference(logits: torch.Tensor) -> torch.Tensor:
    """For logits (K tasks, n, classes): per sample, the task whose prediction has the lowest
    entropy (n,)."""
    logp = F.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return entropy.argmin(dim=0)

