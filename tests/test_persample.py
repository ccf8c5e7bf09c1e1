"""Per-sample gradient statistics and the importances built on them, against brute force:
an explicit loop over single samples, one backward each."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lifelab.learners.importance import (
    fisher_diagonal,
    mas_importance,
    random_directions,
    scp_importance,
)
from lifelab.learners.persample import LinearCapture, _vmap_chunk, grad_power_sum


def mlp(*sizes: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def data(n: int = 11, d: int = 6, c: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(c, (n,), generator=g)


def loop_sum(model: nn.Module, per_sample, n: int, power: float) -> dict[str, torch.Tensor]:
    """sum_n |grad of sample n's loss|^power, one sample at a time."""
    params = dict(model.named_parameters())
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for i in range(n):
        grads = torch.autograd.grad(per_sample(i), list(params.values()), allow_unused=True)
        for name, g in zip(params, grads, strict=True):
            if g is not None:
                total[name] += g.abs() ** power
    return total


def assert_close(got: dict, want: dict, rtol: float = 1e-4) -> None:
    assert set(got) == set(want)
    for name in want:
        scale = want[name].abs().max().clamp(min=1e-12)
        assert (got[name] - want[name]).abs().max() <= rtol * scale, name


@pytest.mark.parametrize("power", [2.0, 1.0])
def test_identity_equals_the_single_sample_loop(power):
    model = mlp(6, 5, 5, 4)
    x, y = data()

    def losses(xb, yb):
        return F.cross_entropy(model(xb), yb, reduction="none")

    want = loop_sum(model, lambda i: losses(x[i:i + 1], y[i:i + 1])[0], len(x), power)
    got = grad_power_sum(model, losses, (x, y), power=power, chunk_size=4)   # chunks too
    assert_close(got, want)
    # the vmap fallback agrees too, on a model the identity would cover
    assert_close(_vmap_chunk(model, losses, [x, y], power), want)


def test_the_minibatch_approximation_is_not_the_per_sample_sum():
    model = mlp(6, 5, 4)
    x, y = data(n=16)

    def losses(xb, yb):
        return F.cross_entropy(model(xb), yb, reduction="none")

    def batch_grad_square_sum(batch_size):
        """The squared gradient of each batch's mean loss times the batch size, summed over
        batches (the mini-batch approximation, as in Avalanche's EWC)."""
        def batch_mean(i):
            return losses(x[i * batch_size:(i + 1) * batch_size],
                          y[i * batch_size:(i + 1) * batch_size]).mean()
        sums = loop_sum(model, batch_mean, len(x) // batch_size, power=2.0)
        return {name: value * batch_size for name, value in sums.items()}

    exact = grad_power_sum(model, losses, (x, y))
    approx = batch_grad_square_sum(8)
    assert not torch.allclose(exact["0.weight"], approx["0.weight"], rtol=0.1)
    # with one sample per batch the approximation is the exact sum
    assert_close(batch_grad_square_sum(1), exact)


class Scaled(nn.Module):
    """A parameter outside nn.Linear: the identity does not cover it."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 5)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 5))
        self.last = nn.Linear(5, 4)

    def forward(self, x):
        return self.last(torch.tanh(self.first(x)) * self.gain)


class Shared(nn.Module):
    """One Linear applied twice: per-sample gradients do not factor, the fallback takes over."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(6, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, x):
        return self.out(torch.relu(self.layer(torch.relu(self.layer(x)))))


@pytest.mark.parametrize("make", [Scaled, Shared])
def test_models_outside_the_identity_fall_back_and_stay_exact(make):
    torch.manual_seed(0)
    model = make()
    x, y = data()

    def losses(xb, yb):
        return F.cross_entropy(model(xb), yb, reduction="none")

    want = loop_sum(model, lambda i: losses(x[i:i + 1], y[i:i + 1])[0], len(x), 2)
    assert_close(grad_power_sum(model, losses, (x, y)), want)


def test_capture_of_a_training_backward_gives_the_per_sample_sum():
    model = mlp(6, 5, 4)
    x, y = data()
    with LinearCapture(model, track_grads=True) as capture:
        F.cross_entropy(model(x), y).backward()        # the batch mean, as training does
    got = capture.tracked_power_sums(2, scale=float(len(x)))
    want = loop_sum(model, lambda i: F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), len(x), 2)
    assert_close(got, want)


def test_empirical_fisher_is_the_mean_squared_per_sample_score():
    model = mlp(6, 5, 4)
    x, y = data()
    want = loop_sum(model, lambda i: -F.log_softmax(model(x[i:i + 1]), 1)[0, y[i]], len(x), 2)
    got = fisher_diagonal(model, model, x, y, kind="empirical")
    assert_close(got, {n: w / len(x) for n, w in want.items()})


def test_true_fisher_samples_each_label_from_the_models_predictive():
    model = mlp(6, 5, 4)
    x, _ = data()
    u = torch.rand(len(x), generator=torch.Generator().manual_seed(7))

    def sampled(i):
        probs = torch.softmax(model(x[i:i + 1]), 1)[0].detach()
        label, cdf = 0, probs[0].item()
        while cdf < u[i].item() and label < len(probs) - 1:   # inverse CDF, by hand
            label += 1
            cdf += probs[label].item()
        return -F.log_softmax(model(x[i:i + 1]), 1)[0, label]

    want = loop_sum(model, sampled, len(x), 2)
    got = fisher_diagonal(model, model, x, kind="true", generator=torch.Generator().manual_seed(7))
    assert_close(got, {n: w / len(x) for n, w in want.items()})
    empirical = fisher_diagonal(model, model, x, torch.zeros(len(x), dtype=torch.long),
                                kind="empirical")
    assert not torch.allclose(got["0.weight"], empirical["0.weight"])


def test_mas_is_the_mean_absolute_gradient_of_each_samples_squared_output_norm():
    model = mlp(6, 5, 4)
    x, _ = data()
    want = loop_sum(model, lambda i: model(x[i:i + 1]).pow(2).sum(), len(x), 1)
    assert_close(mas_importance(model, model, x), {n: w / len(x) for n, w in want.items()})


def test_scp_averages_squared_gradients_of_each_projected_mean_output():
    model = mlp(6, 5, 4)
    x, _ = data()
    xi = random_directions(7, 4, torch.Generator().manual_seed(3))
    assert torch.allclose(xi.norm(dim=1), torch.ones(7))
    params = dict(model.named_parameters())
    want = {n: torch.zeros_like(p) for n, p in params.items()}
    for direction in xi:                                  # one backward per slice, by hand
        grads = torch.autograd.grad(direction @ model(x).mean(0), list(params.values()))
        for n, g in zip(params, grads, strict=True):
            want[n] += g * g / len(xi)
    assert_close(scp_importance(model, model, x, xi, chunk_size=4), want)
