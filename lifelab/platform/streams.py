"""Task streams for continual learning; the scenario (task / domain / class) is part of the config.

Kinds:
- ``permuted``: every task is the whole dataset under a fixed pixel permutation (task 0 is the
  identity, as in van de Ven's code); permutations are applied per batch, so PermutedMNIST-100
  holds the pixels once.
- ``rotated``: every task is the whole dataset rotated anticlockwise by a fixed angle (rotated
  MNIST, Lopez-Paz & Ranzato 2017), nearest-neighbour as PIL rotates, applied per batch too.
  `angles: seeded` (default) draws task t's angle uniformly from [t, t+1) * 180 / tasks with the
  stream's seed, as GEM's generator does; `angles: even` uses exactly t * 180 / tasks (task 0
  unrotated).
- ``split``: task t holds k classes (k = classes_per_task): classes k*t .. k*t+k-1 with
  `class_order: natural` (default; Seq-CIFAR-10, Mammoth), or positions k*t .. of a permutation
  of all classes drawn with the stream's seed with `class_order: seeded` (Split CIFAR-100 as
  iCaRL shuffles it). A task's `classes` are its dataset labels in that order; its labels
  follow the order (class scenario: position in the order; task/domain: position in the task).

Batches are float32 rows (B, D): images are held compactly (N, C, H, W) and converted per batch
(bytes / 255, then rotation, augmentation, per-dataset normalisation, permutation). Rows, not
images, so that every learner and replay memory written for vectors keeps working; a network
that wants images views a row as `stream.input_shape` for free. `augment: auto` gives training
batches the dataset's standard augmentation (random crop with 4-pixel padding + horizontal
flip for CIFAR and TinyImageNet; none for digits), drawn from the generator the learner passes
to `train_batch`; evaluation sets are never augmented.

Length of a task: `steps_per_task` optimizer steps, or with `epochs_per_task` > 0 (which then
wins) ceil(epochs * mean training samples per task / batch_size) steps (`Stream.steps_per_task`).
Batches are drawn with replacement, so an epoch is a budget of samples, not one exact pass.

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
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lifelab.errors import ConfigError
from lifelab.platform import transforms
from lifelab.platform.checks import check_stream_source, check_value, stream_from_mapping
from lifelab.platform.data import AUGMENTATION, DATASETS, NORMALIZATION, Dataset, as_float
from lifelab.platform.episodes import EPISODE_KINDS, EpisodeConfig

STREAM_KINDS: tuple[str, ...] = ("permuted", "rotated", "split")
CLASS_ORDERS: tuple[str, ...] = ("natural", "seeded")
ANGLES: tuple[str, ...] = ("seeded", "even")
MAX_ANGLE = 180.0         # rotated MNIST's angles lie in [0, 180) degrees (GEM)
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
    epochs_per_task: int = 0   # > 0: the task's length in epochs instead (see the docstring)
    classes_per_task: int = 2  # split only
    class_order: str = "natural"  # split only: natural or seeded
    angles: str = "seeded"     # rotated only: seeded (GEM) or even
    augment: str = "auto"      # training augmentation: auto (the dataset's), none or crop_flip
    seed: int = 0  # fixes the permutations, angles, class order and the validation samples
    validation: float = 0.1  # fraction of each class's training samples held out for selection
    data_root: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.dataset, str) and ":" in self.dataset):   # module:function
            check_value("stream.dataset", self.dataset, str, choices=DATASETS)
        check_value("stream.kind", self.kind, str, choices=STREAM_KINDS)
        check_value("stream.scenario", self.scenario, str, choices=SCENARIOS)
        check_value("stream.tasks", self.tasks, int, 1, MAX_TASKS)
        check_value("stream.steps_per_task", self.steps_per_task, int, 1)
        check_value("stream.epochs_per_task", self.epochs_per_task, int, 0, 10_000)
        check_value("stream.classes_per_task", self.classes_per_task, int, 1, 1000)
        check_value("stream.class_order", self.class_order, str, choices=CLASS_ORDERS)
        check_value("stream.angles", self.angles, str, choices=ANGLES)
        check_value("stream.augment", self.augment, str,
                    choices=("auto", *transforms.AUGMENTATIONS))
        check_value("stream.validation", self.validation, float, 0, 0.5, what="a fraction",
                    hint=" (0: no validation split)")
        check_stream_source(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], learner: str = "") -> StreamConfig:
        """Build from a plain dict (e.g. parsed YAML); missing keys take their defaults. An
        episode kind is refused, naming `learner` (episodes: `stream_config`)."""
        if isinstance(d, Mapping) and d.get("kind") in EPISODE_KINDS:
            who = f"learner '{learner}'" if learner else "a continual learner"
            raise ConfigError(f"{who} learns from a task stream, not stream.kind {d['kind']}: "
                              f"use one of {', '.join(STREAM_KINDS)}")
        return stream_from_mapping(cls, d, "stream.{key} is not a stream key")

    def check_dataset(self, dataset: Dataset) -> None:
        """Refuse, before any trial starts, a stream `dataset` cannot give (e.g. more classes
        than it has)."""
        build_stream(self, dataset)


def stream_config(d: Mapping[str, Any]) -> StreamConfig | EpisodeConfig:
    """The config of the stream `d` describes, by its kind: an EpisodeConfig for an episode
    kind (trial_and_error), else a StreamConfig. Both have `dataset` and `check_dataset`."""
    if isinstance(d, Mapping) and d.get("kind") in EPISODE_KINDS:
        return EpisodeConfig.from_dict(d)
    return StreamConfig.from_dict(d)


@dataclass(frozen=True, eq=False)
class _Pipeline:
    """What turns stored images into a stream's batches; shared by its tasks."""

    input_shape: tuple[int, ...]
    mean: torch.Tensor | None = None      # (C, 1, 1): normalise when set
    std: torch.Tensor | None = None
    augment: str = "none"

    def to(self, move: Callable[[torch.Tensor], torch.Tensor]) -> _Pipeline:
        if self.mean is None:
            return self
        return dataclasses.replace(self, mean=move(self.mean), std=move(self.std))


class Task:
    """One task of a stream. Holds references to shared data; its view of the images (a
    permutation or a rotation) is applied per batch."""

    def __init__(
        self,
        index: int,
        classes: tuple[int, ...],
        data: _Data,
        pipeline: _Pipeline,
        labels: torch.Tensor,
        perm: torch.Tensor | None = None,
        rotation: tuple[torch.Tensor, torch.Tensor] | None = None,
        angle: float = 0.0,
    ) -> None:
        self.index = index
        self.classes = classes
        self._x_train, self._y_train, self._x_val, self._y_val, self._x_test, self._y_test = data
        self._pipeline = pipeline
        self._labels = labels      # dataset label -> the label the learner sees
        self._perm = perm          # None = identity: no gather at all
        self._rotation = rotation  # (source index, inside) of transforms.rotation_map, or None
        self.angle = angle         # rotated streams: degrees anticlockwise
        self.num_train = len(self._y_train)
        self.num_val = len(self._y_val)

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `idx` (indices in 0..num_train-1) of this task's training set: x (B, D), y (B,).
        With a `generator` (CPU), the stream's augmentation draws its random choices from it;
        without one, the samples come back unaugmented (e.g. to fill a memory)."""
        x, y = self._x_train.index_select(0, idx), self._y_train.index_select(0, idx)
        if generator is not None and self._pipeline.augment == "crop_flip":
            offsets, flips = transforms.draw_crop_flip(len(idx), generator)
            return self._transform(x, y, (offsets, flips))
        return self._transform(x, y)

    def eval_set(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """This task's whole validation ("val") or test ("test") set, labels as in train_batch."""
        if split == "val":
            return self._transform(self._x_val, self._y_val)
        if split == "test":
            return self._transform(self._x_test, self._y_test)
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def _transform(self, x: torch.Tensor, y: torch.Tensor,
                   crop_flip: tuple[torch.Tensor, torch.Tensor] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        pipe = self._pipeline
        x = as_float(x)
        if self._rotation is not None:
            x = transforms.rotate(x, *self._rotation)
        if crop_flip is not None:
            x = transforms.crop_flip(x, *crop_flip)
        if pipe.mean is not None:
            x = transforms.normalize(x, pipe.mean, pipe.std)
        x = x.reshape(len(x), -1)
        if self._perm is not None:
            x = x.index_select(1, self._perm)
        return x, self._labels.index_select(0, y)

    def _to(self, move: Callable[[torch.Tensor], torch.Tensor]) -> Task:
        data = (move(self._x_train), move(self._y_train), move(self._x_val), move(self._y_val),
                move(self._x_test), move(self._y_test))
        perm = None if self._perm is None else move(self._perm)
        rotation = None if self._rotation is None else tuple(map(move, self._rotation))
        return Task(self.index, self.classes, data, self._pipeline.to(move), move(self._labels),
                    perm, rotation, self.angle)


class Stream:
    """A sequence of tasks plus the output-unit layout its scenario implies."""

    def __init__(self, config: StreamConfig, tasks: list[Task], input_shape: tuple[int, ...],
                 units_per_task: int) -> None:
        self.config = config
        self.tasks = tasks
        self.input_shape = tuple(input_shape)    # what a batch row is, as an image
        self.input_dim = math.prod(self.input_shape)
        self._c = units_per_task
        domain = config.scenario == "domain"
        self.num_outputs = units_per_task if domain else units_per_task * len(tasks)

    def steps_per_task(self, batch_size: int) -> int:
        """Optimizer steps per task for batches of `batch_size` current-task samples."""
        epochs = self.config.epochs_per_task
        if not epochs:
            return self.config.steps_per_task
        mean_samples = sum(task.num_train for task in self.tasks) / len(self.tasks)
        return max(1, math.ceil(epochs * mean_samples / batch_size))

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
        return Stream(self.config, tasks, self.input_shape, self._c)


def build_stream(config: StreamConfig, dataset: Dataset) -> Stream:
    """Cut `dataset` (loaded for config.dataset) into the tasks `config` describes."""
    if dataset.name != config.dataset:
        raise ValueError(f"stream wants dataset {config.dataset!r}, got {dataset.name!r}")
    shape = tuple(dataset.input_shape)
    x_train = dataset.x_train.reshape(len(dataset.x_train), *shape)   # views: rows -> images
    x_test = dataset.x_test.reshape(len(dataset.x_test), *shape)
    data = (*hold_out(x_train, dataset.y_train, config.validation, config.seed),
            x_test, dataset.y_test)
    pipeline = _pipeline(config, dataset)
    if config.kind == "split":
        return _split(config, dataset, data, pipeline)
    return _whole(config, dataset, data, pipeline)


def _pipeline(config: StreamConfig, dataset: Dataset) -> _Pipeline:
    augment = AUGMENTATION.get(dataset.name, "none") if config.augment == "auto" \
        else config.augment
    if augment != "none" and len(dataset.input_shape) != 3:
        raise ConfigError(f"stream.augment {augment} needs images (C, H, W); {dataset.name} "
                          f"has input shape {tuple(dataset.input_shape)}: set augment: none")
    stats = NORMALIZATION.get(dataset.name)
    if stats is None:
        return _Pipeline(tuple(dataset.input_shape), augment=augment)
    mean, std = (torch.tensor(v, dtype=torch.float32).reshape(-1, 1, 1) for v in stats)
    return _Pipeline(tuple(dataset.input_shape), mean, std, augment)


def _whole(config: StreamConfig, dataset: Dataset, data: _Data, pipeline: _Pipeline) -> Stream:
    """permuted and rotated: every task is the whole dataset under its own fixed view."""
    c = dataset.num_classes
    if config.kind == "rotated" and len(dataset.input_shape) != 3:
        raise ConfigError(f"stream.kind rotated needs images (C, H, W); {dataset.name} has "
                          f"input shape {tuple(dataset.input_shape)}: use kind permuted")
    gen = torch.Generator().manual_seed(config.seed)
    tasks = []
    for t in range(config.tasks):
        offset = c * t if config.scenario == "class" else 0
        labels = torch.arange(c) + offset
        if config.kind == "permuted":
            # Drawn in order, so task t's permutation does not depend on how many tasks follow.
            perm = None if t == 0 else torch.randperm(dataset.input_dim, generator=gen)
            tasks.append(Task(t, tuple(range(c)), data, pipeline, labels, perm=perm))
            continue
        width = MAX_ANGLE / config.tasks
        if config.angles == "even":
            angle = t * width
        else:  # one draw per task, in order: GEM's min + U[0, 1) * bin width
            angle = (t + torch.rand((), generator=gen, dtype=torch.float64).item()) * width
        _, h, w = dataset.input_shape
        rotation = None if angle == 0 else transforms.rotation_map(angle, h, w)
        tasks.append(Task(t, tuple(range(c)), data, pipeline, labels, rotation=rotation,
                          angle=angle))
    return Stream(config, tasks, dataset.input_shape, c)


def class_order(config: StreamConfig, num_classes: int) -> list[int]:
    """The order split tasks take classes in: natural, or a permutation drawn with the seed."""
    if config.class_order == "natural":
        return list(range(num_classes))
    return torch.randperm(num_classes, generator=torch.Generator().manual_seed(config.seed)
                          ).tolist()


def _split(config: StreamConfig, dataset: Dataset, data: _Data, pipeline: _Pipeline) -> Stream:
    k = config.classes_per_task
    if config.tasks * k > dataset.num_classes:
        raise ConfigError(
            f"stream.tasks * stream.classes_per_task = {config.tasks * k} exceeds the "
            f"{dataset.num_classes} classes of {dataset.name}: lower stream.tasks or "
            "stream.classes_per_task"
        )
    x_train, y_train, x_val, y_val, x_test, y_test = data
    order = class_order(config, dataset.num_classes)
    tasks = []
    for t in range(config.tasks):
        classes = order[k * t:k * t + k]
        # Tasks are disjoint, so selecting their rows copies each sample at most once overall.
        subset = tuple(part for x, y in ((x_train, y_train), (x_val, y_val), (x_test, y_test))
                       for part in _classes(x, y, classes))
        labels = torch.full((dataset.num_classes,), -1, dtype=torch.int64)
        first = k * t if config.scenario == "class" else 0
        labels[torch.tensor(classes)] = torch.arange(first, first + k)
        tasks.append(Task(t, tuple(classes), subset, pipeline, labels))
    return Stream(config, tasks, dataset.input_shape, k)


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


def _classes(x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, ...]:
    keep = torch.isin(y, torch.tensor(classes, dtype=y.dtype))
    return x[keep], y[keep]
