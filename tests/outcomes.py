"""Learning outcomes stated over seeds.

One short training at one seed is one draw of a chaotic process: on another CPU (floats differ in
the last bits) or at another thread count the same seed ends elsewhere. So a test of what a
learner learns runs several seeds (each seeds the learner and its stream), pairs every comparison
by seed, and asserts either on each seed or on the mean, with a threshold taken from the spread
measured on more seeds than it runs (the measured numbers are commented next to the threshold).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

#: the seeds a claim runs on unless it names others
SEEDS = (0, 1, 2)


def over_seeds(run: Callable[[int], T], seeds: Iterable[int] | None = None) -> list[T]:
    """run(seed) for each seed (default SEEDS)."""
    return [run(seed) for seed in (SEEDS if seeds is None else seeds)]


def paired(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a - b, seed by seed."""
    return [x - y for x, y in zip(a, b, strict=True)]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def shown(values: Sequence[float]) -> str:
    """Per-seed values for an assertion message."""
    return "per seed: " + ", ".join(f"{v:.3f}" for v in values)
