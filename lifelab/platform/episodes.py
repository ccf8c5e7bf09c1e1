"""The ``trial_and_error`` stream: episodes in which a label mapping is learned from right/wrong.

Digits are split into groups (e.g. [0-3], [4-6], [7-9]). Each episode draws a fresh *answer* for
every class: a random permutation of the labels within each group (label shuffling as in Santoro
et al. 2016), so the mapping cannot be memorised across episodes. A learner sees an image and
only its group index, guesses an answer, hears right or wrong, and may guess again, up to
``tries`` times. An episode is ``presentations`` rounds; each round shows every class of the
groups once, in a fresh random order, with a fresh image. In the changing-world variant
(``switch_at: s``) the episode's answers are re-drawn before round s (1-based) as a derangement
within each group, so every class's answer changes and the learner must notice and recover.

Episodes come back as a batch of tensors (`Episodes`). The exact reference curves of ideal
learners on exactly this sampling are `lifelab.analysis.ceilings`.

Stream keys (default): dataset (mnist5k), kind (trial_and_error), groups ([[0,1,2,3],[4,5,6],
[7,8,9]]), tries (3), presentations (10), switch_at (0: never), seed (0: fixes the held-out
episodes and the validation images), validation (0.1: the fraction of each class's training
images held out for validation episodes; 0: none), data_root, download.

Splits: training episodes show the training images that are not held out, validation episodes
only the held-out ones (`EpisodeSampler(..., indices=...)`), test episodes the test split; each
split draws its episodes from its own generator (`split_seed`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lifelab.errors import ConfigError
from lifelab.platform.checks import check_stream_source, check_value, stream_from_mapping
from lifelab.platform.data import DATASETS, Dataset

EPISODE_KINDS: tuple[str, ...] = ("trial_and_error",)
MAX_PRESENTATIONS = 10     # the metrics acc_presentation_1..10 have fixed names
MAX_TRIES = 10
DEFAULT_GROUPS = ((0, 1, 2, 3), (4, 5, 6), (7, 8, 9))


@dataclass(frozen=True)
class EpisodeConfig:
    """The `stream` part of a learner config for trial-and-error episodes."""

    dataset: str = "mnist5k"
    kind: str = "trial_and_error"
    groups: tuple[tuple[int, ...], ...] = DEFAULT_GROUPS
    tries: int = 3
    presentations: int = 10
    switch_at: int = 0
    seed: int = 0
    validation: float = 0.1    # fraction of each class's training images for validation episodes
    data_root: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        check_value("stream.dataset", self.dataset, str, choices=DATASETS)
        check_value("stream.kind", self.kind, str, choices=EPISODE_KINDS)
        object.__setattr__(self, "groups", _check_groups(self.groups))
        check_value("stream.tries", self.tries, int, 1, MAX_TRIES)
        check_value("stream.presentations", self.presentations, int, 1, MAX_PRESENTATIONS)
        check_value("stream.validation", self.validation, float, 0, 0.5, what="a fraction",
                    hint=" (0: no validation episodes)")
        if self.switch_at != 0:
            check_value("stream.switch_at", self.switch_at, int, 2, self.presentations,
                        hint=" (the round before which the answers change; 0 = never)")
        check_stream_source(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpisodeConfig:
        """Build from a plain dict (e.g. parsed YAML); missing keys take their defaults."""
        return stream_from_mapping(cls, d, "stream.{key} is not a key of a trial_and_error stream")

    def check_dataset(self, dataset: Dataset) -> None:
        """Refuse, before any trial starts, groups naming a label `dataset` does not have."""
        if max(self.classes) >= dataset.num_classes:
            raise ConfigError(f"stream.groups names label {max(self.classes)} but "
                              f"{dataset.name} has labels 0..{dataset.num_classes - 1}: "
                              "fix stream.groups")

    @property
    def classes(self) -> tuple[int, ...]:
        """Every class an episode shows, group by group."""
        return tuple(c for group in self.groups for c in group)


def split_seed(split: str, seed: int) -> int:
    """The seed of one split's episode generator: a hash of (split, seed), so the training,
    validation and test generators are distinct streams whatever the seeds."""
    digest = hashlib.sha256(f"{split}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _check_groups(groups: object) -> tuple[tuple[int, ...], ...]:
    fix = "give a list of disjoint lists of class labels, e.g. [[0, 1, 2, 3], [4, 5, 6]]"
    if (not isinstance(groups, (list, tuple)) or not groups
            or not all(isinstance(g, (list, tuple)) and g for g in groups)):
        raise ConfigError(f"stream.groups must be non-empty: {fix}, got {groups!r}")
    flat = [c for g in groups for c in g]
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in flat):
        raise ConfigError(f"stream.groups holds a label that is not an integer >= 0: {fix}, "
                          f"got {groups!r}")
    if len(set(flat)) != len(flat):
        raise ConfigError(f"stream.groups repeats a label: {fix}, got {groups!r}")
    if max(len(g) for g in groups) < 2:
        raise ConfigError(f"stream.groups has no group of 2 or more labels (nothing to "
                          f"learn): {fix}, got {groups!r}")
    return tuple(tuple(g) for g in groups)


@dataclass(frozen=True, eq=False)
class Episodes:
    """A batch of B episodes of R rounds x C steps (one per class), in presentation order.

    x (B, R, C, D) images; label (B, R, C) their dataset class; answer (B, R, C) the answer that
    is right this episode (a label of the same group); group (B, R, C) the group index given to
    the learner; switched (B,) whether the episode's answers change before `switch_round`."""
    x: torch.Tensor
    label: torch.Tensor
    answer: torch.Tensor
    group: torch.Tensor
    switched: torch.Tensor
    switch_round: int              # 0-based round of the change (= presentations: never)

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> Episodes:
        return Episodes(self.x.to(device), self.label.to(device), self.answer.to(device),
                        self.group.to(device), self.switched.to(device), self.switch_round)


class EpisodeSampler:
    """Draws batches of trial-and-error episodes from one split of a dataset ("train" or
    "test"), or from the samples `indices` of it only (e.g. the validation hold-out)."""

    def __init__(self, config: EpisodeConfig, dataset: Dataset, split: str = "train",
                 indices: torch.Tensor | None = None):
        if dataset.name != config.dataset:
            raise ValueError(f"stream wants dataset {config.dataset!r}, got {dataset.name!r}")
        config.check_dataset(dataset)
        flat = dataset.flat()           # episodes show float rows (N, D)
        x, y = (flat.x_train, flat.y_train) if split == "train" else \
            (flat.x_test, flat.y_test)
        if indices is not None:
            x, y = x[indices], y[indices]
        self.config = config
        self.x = x
        classes = torch.tensor(config.classes)
        pools = [torch.nonzero(y == c).flatten() for c in config.classes]
        if min(len(p) for p in pools) == 0 and indices is not None:
            raise ConfigError(f"a class of stream.groups has no held-out images in "
                              f"{dataset.name}: raise stream.validation")
        if min(len(p) for p in pools) == 0:
            raise ConfigError(f"a class of stream.groups has no {split} images in "
                              f"{dataset.name}: fix stream.groups")
        self.counts = torch.tensor([len(p) for p in pools])
        self.pools = torch.nn.utils.rnn.pad_sequence(pools, batch_first=True)   # (C, max)
        self.classes = classes
        group_of = [g for g, group in enumerate(config.groups) for _ in group]
        self.group_of = torch.tensor(group_of)                                 # per position
        # members[g]: the positions (into config.classes) of group g
        self.members = [torch.tensor([i for i, gg in enumerate(group_of) if gg == g])
                        for g in range(len(config.groups))]

    def _mapping(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        """(B, C): for each class position, the position whose label is its answer."""
        out = torch.empty(batch, len(self.classes), dtype=torch.long)
        for members in self.members:
            perm = torch.rand(batch, len(members), generator=gen).argsort(dim=1)
            out[:, members] = members[perm]
        return out

    def _derangement(self, mapping: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The mapping composed with a random derangement within each group (size >= 2), so
        every class of such a group gets a new answer."""
        out = mapping.clone()
        for members in self.members:
            n = len(members)
            if n < 2:
                continue
            shuffle = torch.rand(mapping.shape[0], n, generator=gen).argsort(dim=1)
            fixed = (shuffle == torch.arange(n)).any(dim=1)
            while fixed.any():            # rejection: about e ~ 2.7 draws per episode
                redraw = torch.rand(int(fixed.sum()), n, generator=gen).argsort(dim=1)
                shuffle[fixed] = redraw
                fixed = (shuffle == torch.arange(n)).any(dim=1)
            out[:, members] = mapping[:, members].gather(1, shuffle)
        return out

    def sample(self, batch: int, gen: torch.Generator, switch_fraction: float = 0.0) -> Episodes:
        """`batch` episodes; with `switch_at` set, a `switch_fraction` of them switch."""
        cfg = self.config
        rounds, c = cfg.presentations, len(self.classes)
        mapping = self._mapping(batch, gen)
        switched = torch.rand(batch, generator=gen) < switch_fraction
        if cfg.switch_at == 0:
            switched[:] = False
        after = self._derangement(mapping, gen)
        switch_round = cfg.switch_at - 1 if cfg.switch_at else rounds
        per_round = mapping.unsqueeze(1).expand(batch, rounds, c).clone()
        late = switched[:, None] & (torch.arange(rounds) >= switch_round)[None, :]
        per_round[late] = after.unsqueeze(1).expand(batch, rounds, c)[late]
        order = torch.rand(batch, rounds, c, generator=gen).argsort(dim=2)     # position shown
        pick = (torch.rand(batch, rounds, c, generator=gen) * self.counts[order]).long()
        index = self.pools[order, pick]
        return Episodes(x=self.x[index], label=self.classes[order],
                        answer=self.classes[per_round.gather(2, order)],
                        group=self.group_of[order], switched=switched,
                        switch_round=switch_round)
