"""Task streams for continual learning; the scenario (task / domain / class) is part of the config.

Kinds:
- ``permuted``: every task is the whole dataset under a fixed pixel permutation (task 0 is the
  identity, as in van de Ven's code); permutations are applied per batch, so PermutedMNIST-100
  holds the pixels once.
- ``split``: task t holds only classes k*t .. k*t+k-1 (k = classes_per_task).

Scenarios (van de Ven & Tolias 2019) decide the output units and labels so that a learner's loss
is always ``cross_entropy(logits[:, stream.output_units(t, seen)], y)``:
- ``task``: one head of c units per task (c = 10 for permuted MNIST, k for split), local labels.
- ``domain``: one shared head of c units, local labels.
- ``class``: c units per task, global labels; a task is scored on all classes seen so far.

Splits: every task has train, validation and test samples. Validation is a fraction
(`validation`, default 0.1) of each class's training images, held out with the stream's seed
before the tasks are cut, so no learner ever trains on it; searches select on it. Test is the
dataset's own test split, reported and never used for a decision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lifelab.errors import ConfigError
from lifelab.platform.data import DATASETS, Dataset
from lifelab.platform.episodes import EPISODE_KINDS, EpisodeConfig

STREAM_KINDS: tuple[str, ...] = ("permuted", "split")
SCENARIOS: tuple[str, ...] = ("task", "domain", "class")
MAX_TASKS = 100

# x/y train, x/y validation, x/y test
_Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
SPLITS: tuple[str, ...] = ("val", "test")       # the splits a learner is evaluated on


@dataclass(frozen=True)
class StreamConfig:
    """The `stream` part of a learner config; validated on construction."""

    dataset: str = "mnist5k"
    kind: str = "permuted"
    tasks: int = 5
    scenario: str = "task"
    steps_per_task: int = 200  # optimizer steps a learner spends on each task
    classes_per_task: int = 2  # split only
    seed: int = 0  # fixes the permutations, the class order and the validation samples
    validation: float = 0.1  # fraction of each class's training samples held out for selection
    data_root: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.dataset, str) and ":" in self.dataset):   # module:function
            _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("kind", self.kind, STREAM_KINDS)
        _check_choice("scenario", self.scenario, SCENARIOS)
        _check_int("tasks", self.tasks, 1, MAX_TASKS)
        _check_int("steps_per_task", self.steps_per_task, 1)
        _check_int("classes_per_task", self.classes_per_task, 1, MAX_TASKS)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        ok = isinstance(self.validation, (int, float)) and not isinstance(self.validation, bool)
        if not (ok and 0 <= self.validation <= 0.5):
            raise ConfigError(f"stream.validation must be a fraction between 0 and 0.5 (0: no "
                              f"validation split), got {self.validation!r}")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError(
                f"stream.data_root must be a directory path or null, got {self.data_root!r}"
            )
        if not isinstance(self.download, bool):
            raise ConfigError(f"stream.download must be true or false, got {self.download!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StreamConfig | EpisodeConfig:
        """Build from a plain dict (e.g. parsed YAML); missing keys take their defaults.
        An episode kind (trial_and_error) gives its own config (lifelab.platform.episodes)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"stream must be a mapping of stream keys, got {d!r}")
        if d.get("kind") in EPISODE_KINDS:
            return EpisodeConfig.from_dict(d)
        keys = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in keys:
                raise ConfigError(f"stream.{key} is not a stream key: use one of {', '.join(keys)}")
        return cls(**d)


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"stream.{key} {value!r} is unknown: use one of {', '.join(choices)}")


def _check_int(key: str, value: object, low: int, high: int | None = None) -> None:
    # bool is an int subclass; `tasks: true` in YAML is a mistake, not 1.
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return
    bounds = f">= {low}" if high is None else f"between {low} and {high}"
    raise ConfigError(f"stream.{key} must be an integer {bounds}, got {value!r}")


class Task:
    """One task of a stream. Holds references to shared data; the permutation is applied lazily."""

    def __init__(
        self,
        index: int,
        classes: tuple[int, ...],
        data: _Data,
        perm: torch.Tensor | None,
        label_offset: int,
    ) -> None:
        self.index = index
        self.classes = classes
        self._x_train, self._y_train, self._x_val, self._y_val, self._x_test, self._y_test = data
        self._perm = perm  # None = identity: no gather at all
        self._label_offset = label_offset  # dataset label + offset = label the learner sees
        self.num_train = len(self._y_train)
        self.num_val = len(self._y_val)

    def train_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `idx` (indices in 0..num_train-1) of this task's training set: x (B, D), y (B,)."""
        return self._transform(self._x_train[idx], self._y_train[idx])

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This task's whole test set, labels as in train_batch."""
        return self._transform(self._x_test, self._y_test)

    def eval_set(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """This task's whole validation ("val") or test ("test") set, labels as in train_batch."""
        if split == "val":
            return self._transform(self._x_val, self._y_val)
        if split == "test":
            return self.test_set()
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def _transform(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._perm is not None:
            x = x[:, self._perm]
        return x, y + self._label_offset

    def _to(self, move: Callable[[torch.Tensor], torch.Tensor]) -> Task:
        data = (move(self._x_train), move(self._y_train), move(self._x_val), move(self._y_val),
                move(self._x_test), move(self._y_test))
        perm = None if self._perm is None else move(self._perm)
        return Task(self.index, self.classes, data, perm, self._label_offset)


class Stream:
    """A sequence of tasks plus the output-unit layout its scenario implies."""

    def __init__(
        self, config: StreamConfig, tasks: list[Task], input_dim: int, units_per_task: int
    ) -> None:
        self.config = config
        self.tasks = tasks
        self.input_dim = input_dim
        self._c = units_per_task
        domain = config.scenario == "domain"
        self.num_outputs = units_per_task if domain else units_per_task * len(tasks)

    def output_units(self, task: int, seen: int) -> slice:
        """Logits scored for `task` once tasks 0..seen-1 have been trained (seen >= task + 1)."""
        if not 0 <= task < seen <= len(self.tasks):
            raise ValueError(f"need 0 <= task < seen <= {len(self.tasks)}, got {task=}, {seen=}")
        c = self._c
        if self.config.scenario == "task":
            return slice(c * task, c * task + c)
        if self.config.scenario == "domain":
            return slice(0, c)
        return slice(0, c * seen)

    def to(self, device: torch.device | str) -> Stream:
        """The same stream with its tensors on `device`; shared tensors stay shared."""
        moved: dict[int, torch.Tensor] = {}

        def move(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in moved:
                moved[id(t)] = t.to(device)
            return moved[id(t)]

        tasks = [task._to(move) for task in self.tasks]
        return Stream(self.config, tasks, self.input_dim, self._c)


def build_stream(config: StreamConfig, dataset: Dataset) -> Stream:
    """Cut `dataset` (loaded for config.dataset) into the tasks `config` describes."""
    if isinstance(config, EpisodeConfig):
        raise ConfigError(f"stream.kind {config.kind} gives episodes, not tasks: a continual "
                          f"learner needs stream.kind {' or '.join(STREAM_KINDS)}")
    if dataset.name != config.dataset:
        raise ValueError(f"stream wants dataset {config.dataset!r}, got {dataset.name!r}")
    data = (*hold_out(dataset.x_train, dataset.y_train, config.validation, config.seed),
            dataset.x_test, dataset.y_test)
    if config.kind == "permuted":
        return _permuted(config, dataset, data)
    return _split(config, dataset, data)


def _permuted(config: StreamConfig, dataset: Dataset, data: _Data) -> Stream:
    c = dataset.num_classes
    gen = torch.Generator().manual_seed(config.seed)
    tasks = []
    for t in range(config.tasks):
        # Drawn in order, so task t's permutation does not depend on how many tasks follow.
        perm = None if t == 0 else torch.randperm(dataset.input_dim, generator=gen)
        offset = c * t if config.scenario == "class" else 0
        tasks.append(Task(t, tuple(range(c)), data, perm, offset))
    return Stream(config, tasks, dataset.input_dim, c)


def _split(config: StreamConfig, dataset: Dataset, data: _Data) -> Stream:
    k = config.classes_per_task
    if config.tasks * k > dataset.num_classes:
        raise ConfigError(
            f"stream.tasks * stream.classes_per_task = {config.tasks * k} exceeds the "
            f"{dataset.num_classes} classes of {dataset.name}: lower stream.tasks or "
            "stream.classes_per_task"
        )
    x_train, y_train, x_val, y_val, x_test, y_test = data
    tasks = []
    for t in range(config.tasks):
        lo = k * t
        # Tasks are disjoint, so selecting their rows copies each sample at most once overall.
        subset = tuple(part for x, y in ((x_train, y_train), (x_val, y_val), (x_test, y_test))
                       for part in _classes(x, y, lo, lo + k))
        offset = 0 if config.scenario == "class" else -lo
        tasks.append(Task(t, tuple(range(lo, lo + k)), subset, None, offset))
    return Stream(config, tasks, dataset.input_dim, k)


def hold_out(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int) -> _Data:
    """(x_train, y_train, x_val, y_val): `fraction` of each class's samples, drawn with `seed`,
    held out for validation (stratified, so every task of a split stream gets its share)."""
    if fraction == 0:
        return x, y, x[:0], y[:0]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    order = order[torch.argsort(y[order], stable=True)]          # shuffled within each class
    counts = torch.bincount(y)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(y)) - starts[y[order]]                # position within its class
    held = torch.zeros(len(y), dtype=torch.bool)
    held[order] = rank < torch.round(counts[y[order]] * fraction).long()
    train, val = (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)
    return x[train], y[train], x[val], y[val]


def _classes(x: torch.Tensor, y: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, ...]:
    keep = (y >= lo) & (y < hi)
    return x[keep], y[keep]
