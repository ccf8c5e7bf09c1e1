"""The ``trial_and_error`` stream: episodes in which a label mapping is learned from right/wrong.

Digits are split into groups (e.g. [0-3], [4-6], [7-9]). Each episode draws a fresh *answer* for
every class: a random permutation of the labels within each group (label shuffling as in Santoro
et al. 2016), so the mapping cannot be memorised across episodes. A learner sees an image and
only its group index, guesses an answer, hears right or wrong, and may guess again, up to
``tries`` times. An episode is ``presentations`` rounds; each round shows every class of the
groups once, in a fresh random order, with a fresh image. In the changing-world variant
(``switch_at: s``) the episode's answers are re-drawn before round s (1-based) as a derangement
within each group, so every class's answer changes and the learner must notice and recover.

Episodes come back as a batch of tensors (`Episodes`). Two exact reference curves on exactly this
sampling: `ideal_curve`, the issue's ideal trial-and-error learner (never repeats a wrong guess,
remembers every confirmed answer, guesses uniformly among what is left), and `bayes_curve`, a
learner that also reads the matching and guesses the most probable answer: the ceiling of a
first try (it beats the ideal one at the first presentation, e.g. 0.567 against 0.469 with
groups 4/3/3 and 2 tries).

Stream keys (default): dataset (mnist5k), kind (trial_and_error), groups ([[0,1,2,3],[4,5,6],
[7,8,9]]), tries (3), presentations (10), switch_at (0: never), seed (0: fixes the held-out
episodes), data_root, download.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lifelab.errors import ConfigError
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
    data_root: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"stream.dataset {self.dataset!r} is unknown: use one of "
                              f"{', '.join(DATASETS)}")
        if self.kind not in EPISODE_KINDS:
            raise ConfigError(f"stream.kind {self.kind!r} is not an episode stream: use "
                              f"{', '.join(EPISODE_KINDS)}")
        object.__setattr__(self, "groups", _check_groups(self.groups))
        _int("tries", self.tries, 1, MAX_TRIES)
        _int("presentations", self.presentations, 1, MAX_PRESENTATIONS)
        _int("seed", self.seed, 0, 2**63 - 1)
        if self.switch_at != 0:
            _int("switch_at", self.switch_at, 2, self.presentations,
                 extra=" (the round before which the answers change; 0 = never)")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError(f"stream.data_root must be a directory path or null, "
                              f"got {self.data_root!r}")
        if not isinstance(self.download, bool):
            raise ConfigError(f"stream.download must be true or false, got {self.download!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpisodeConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"stream must be a mapping of stream keys, got {d!r}")
        keys = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in keys:
                raise ConfigError(f"stream.{key} is not a key of a trial_and_error stream: "
                                  f"use one of {', '.join(keys)}")
        return cls(**{"kind": "trial_and_error", **d})

    @property
    def classes(self) -> tuple[int, ...]:
        """Every class an episode shows, group by group."""
        return tuple(c for group in self.groups for c in group)


def _int(key: str, value: object, low: int, high: int, extra: str = "") -> None:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return
    raise ConfigError(f"stream.{key} must be an integer between {low} and {high}{extra}, "
                      f"got {value!r}")


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
    """Draws batches of trial-and-error episodes from one split of a dataset."""

    def __init__(self, config: EpisodeConfig, dataset: Dataset, split: str = "train"):
        if dataset.name != config.dataset:
            raise ValueError(f"stream wants dataset {config.dataset!r}, got {dataset.name!r}")
        if max(config.classes) >= dataset.num_classes:
            raise ConfigError(f"stream.groups names label {max(config.classes)} but "
                              f"{dataset.name} has labels 0..{dataset.num_classes - 1}: "
                              "fix stream.groups")
        flat = dataset.flat()           # episodes show float rows (N, D)
        x, y = (flat.x_train, flat.y_train) if split == "train" else \
            (flat.x_test, flat.y_test)
        self.config = config
        self.x = x
        classes = torch.tensor(config.classes)
        pools = [torch.nonzero(y == c).flatten() for c in config.classes]
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


def ideal_curve(groups: tuple[tuple[int, ...], ...], tries: int,
                presentations: int) -> dict[str, list[float] | float]:
    """The exact expected behaviour of an ideal trial-and-error learner on these episodes.

    The ideal learner never repeats a wrong guess for a class and remembers every confirmed
    answer: for a class it has confirmed, it answers right at once; otherwise it guesses
    uniformly among its group's answers that are neither confirmed for another class nor already
    wrong for this one. (It does not reason about the matching beyond that, e.g. "class a is not
    x, so x is likelier for b"; a full Bayesian learner could edge above this curve.)

    Returns `acc` (first-try accuracy at presentations 1..P, averaged over classes), `tries`
    (mean tries until right at each presentation, a miss in all tries counted as tries + 1),
    and `chance` (first-try accuracy of a learner that guesses within the group with no memory).

    Exact by a dynamic program over the group's state; groups are independent. Exchangeability
    makes the state small: given which classes are confirmed and how many (unconfirmed) wrong
    answers each unconfirmed class has, the wrong sets are independent uniform subsets, so a
    new confirmation removes its answer from another class's wrong set with probability
    m / (u - 1) (m wrong, u unconfirmed). tests/test_lifelong_lstm.py checks this against a
    dynamic program over explicit sets and against a simulation of the real sampler. Groups of
    up to 4 labels take milliseconds; one group of all 10 digits takes about 30 s.
    """
    acc, mean_tries = _over_groups(groups, presentations,
                                   lambda n: _group_curve(n, tries, presentations))
    chance = len(groups) / sum(len(g) for g in groups)    # sum over groups of n * (1 / n)
    return {"acc": acc, "tries": mean_tries, "chance": chance}


def _over_groups(groups, presentations: int, curves_of_size) -> tuple[list[float], list[float]]:
    """Per-presentation (accuracy, tries) over all classes: each group's curves, which depend
    only on its size, weighted by its share of the classes."""
    total = sum(len(g) for g in groups)
    acc, tries = [0.0] * presentations, [0.0] * presentations
    for group in groups:
        g_acc, g_tries = curves_of_size(len(group))
        for k in range(presentations):
            acc[k] += g_acc[k] / total
            tries[k] += g_tries[k] / total
    return acc, tries


@functools.lru_cache(maxsize=64)
def _group_curve(n: int, tries: int, presentations: int) -> tuple[list[float], list[float]]:
    """Per-presentation sums over the group's n classes (expected correct first tries, tries)."""
    # a state: sorted tuple of per-class wrong counts (or `confirmed`), all not yet presented
    dist: dict[tuple[int, ...], float] = {tuple([0] * n): 1.0}
    acc, used = [], []
    for _ in range(presentations):
        # within a round: (shown, waiting) multisets; next class uniform among the waiting
        layer = {((), key): p for key, p in dist.items()}
        first = tries_sum = 0.0
        for _ in range(n):
            nxt: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
            for (shown, waiting), p in layer.items():
                for i, m in enumerate(waiting):
                    if i and waiting[i - 1] == m:
                        continue                       # identical classes: counted once
                    pick = p * waiting.count(m) / len(waiting)
                    rest = waiting[:i] + waiting[i + 1:]
                    for outcome, q, right_first, n_tries in _present(m, shown, rest, n, tries):
                        first += pick * q * right_first
                        tries_sum += pick * q * n_tries
                        nxt[outcome] = nxt.get(outcome, 0.0) + pick * q
            layer = nxt
        acc.append(first)
        used.append(tries_sum)
        dist = {}
        for (shown, _), p in layer.items():
            key = tuple(sorted(shown))
            dist[key] = dist.get(key, 0.0) + p
    return acc, used


def _present(m: int, shown: tuple[int, ...], waiting: tuple[int, ...], n: int,
             tries: int) -> list[tuple[tuple[tuple[int, ...], tuple[int, ...]], float, float, int]]:
    """Outcomes of presenting one class with m wrong answers: [((shown, waiting), prob,
    right at first try, tries used)]."""
    if m < 0:                                          # confirmed: right at once
        return [((tuple(sorted((*shown, -1))), waiting), 1.0, 1.0, 1)]
    u = n - sum(1 for s in (*shown, *waiting) if s < 0)   # unconfirmed, this class included
    out = []
    p_reach = 1.0
    for t in range(tries):
        if p_reach == 0.0:
            break
        p_right = 1.0 / (u - m - t)
        for others, q in _confirm(shown, waiting, u):
            new_shown, new_waiting = others
            out.append(((tuple(sorted((*new_shown, -1))), new_waiting),
                        p_reach * p_right * q, 1.0 if t == 0 else 0.0, t + 1))
        p_reach *= 1.0 - p_right
    if p_reach > 0:
        out.append(((tuple(sorted((*shown, m + tries))), waiting), p_reach, 0.0, tries + 1))
    return out


def _confirm(shown: tuple[int, ...], waiting: tuple[int, ...],
             u: int) -> list[tuple[tuple[tuple[int, ...], tuple[int, ...]], float]]:
    """After a class is confirmed (u unconfirmed before), every other unconfirmed class with m
    wrong answers loses one of them with probability m / (u - 1), independently."""
    results: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {((), ()): 1.0}
    for part in (0, 1):
        items = (shown, waiting)[part]
        for m in items:
            choices = [(m, 1.0)] if m <= 0 else [(m - 1, m / (u - 1)), (m, 1 - m / (u - 1))]
            choices = [(value, q) for value, q in choices if q > 0]   # m = u - 1: surely hit
            nxt: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
            for (s, w), p in results.items():
                for value, q in choices:
                    key = (tuple(sorted((*s, value))), w) if part == 0 else \
                        (s, tuple(sorted((*w, value))))
                    nxt[key] = nxt.get(key, 0.0) + p * q
            results = nxt
    return list(results.items())


MAX_BAYES_GROUP = 6     # the Bayes ceiling enumerates the group's n! answer assignments


def bayes_curve(groups: tuple[tuple[int, ...], ...], tries: int,
                presentations: int) -> dict[str, list[float]]:
    """The exact expected curve of a Bayes-greedy learner: it remembers everything it heard and
    at every guess picks an answer of highest posterior probability (uniform prior over the
    within-group assignments; ties broken uniformly). Unlike `ideal_curve`'s learner it also
    reads the matching: "class a is not x" makes x likelier for the others. It maximises the
    chance of each guess being right, so it is the ceiling of first-try accuracy at the first
    presentation; later it is at least as good as `ideal_curve`. Groups of at most
    MAX_BAYES_GROUP labels (the computation enumerates assignments)."""
    if max(len(g) for g in groups) > MAX_BAYES_GROUP:
        raise ValueError(f"bayes_curve enumerates assignments: groups of at most "
                         f"{MAX_BAYES_GROUP} labels")
    acc, used = _over_groups(groups, presentations, lambda n: _bayes_group(n, tries, presentations))
    return {"acc": acc, "tries": used}


@functools.lru_cache(maxsize=16)
def _bayes_group(n: int, tries: int, presentations: int) -> tuple[list[float], list[float]]:
    import itertools

    perms = list(itertools.permutations(range(n)))   # truth: class i's answer is i (symmetry)
    empty = (0.0,) * presentations

    def consistent(excluded: frozenset) -> list[tuple[int, ...]]:
        return [p for p in perms if all(p[c] != a for c, a in excluded)]

    @functools.cache
    def value(r: int, waiting: frozenset, known: frozenset, excluded: frozenset):
        """(sums of right first tries, sums of tries) per round from here on."""
        if r == presentations:
            return empty, empty
        if not waiting:
            return value(r + 1, frozenset(range(n)), known, excluded)
        if len(known) == n:                          # everything known: right at once
            acc = [0.0] * presentations
            acc[r] = float(len(waiting))
            for k in range(r + 1, presentations):
                acc[k] = float(n)
            return tuple(acc), tuple(acc)
        acc, used = [0.0] * presentations, [0.0] * presentations
        for c in waiting:
            for prob, first, n_tries, new_known, new_excluded in present(c, known, excluded):
                w = prob / len(waiting)
                a, u = value(r, waiting - {c}, new_known, new_excluded)
                for k in range(presentations):
                    acc[k] += w * a[k]
                    used[k] += w * u[k]
                acc[r] += w * first
                used[r] += w * n_tries
        return tuple(acc), tuple(used)

    def present(c, known, excluded):
        if c in known:
            return [(1.0, 1.0, 1, known, excluded)]
        out = []

        def go(t, excluded, prob):
            counts = [0] * n
            for p in consistent(excluded):
                counts[p[c]] += 1
            best = max(counts)
            guesses = [a for a in range(n) if counts[a] == best]
            for g in guesses:
                q = prob / len(guesses)
                if g == c:
                    # a confirmed answer: every other class is "not g" from now on
                    more = frozenset((o, c) for o in range(n) if o != c)
                    out.append((q, 1.0 if t == 0 else 0.0, t + 1, known | {c},
                                excluded | more))
                elif t + 1 < tries:
                    go(t + 1, excluded | {(c, g)}, q)
                else:
                    out.append((q, 0.0, tries + 1, known, excluded | {(c, g)}))
        go(0, excluded, 1.0)
        return out

    acc, used = value(0, frozenset(range(n)), frozenset(), frozenset())
    return list(acc), list(used)
