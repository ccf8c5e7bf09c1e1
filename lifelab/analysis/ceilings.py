"""Exact reference curves for the ``trial_and_error`` episodes (lifelab.platform.episodes): what
an ideal learner scores at each presentation, to read a learner's curve against.

`ideal_curve` is the ideal trial-and-error learner (never repeats a wrong guess, remembers every
confirmed answer, guesses uniformly among what is left); `bayes_curve` a learner that also reads
the matching and guesses the most probable answer: the ceiling of a first try (it beats the ideal
one at the first presentation, e.g. 0.567 against 0.469 with groups 4/3/3 and 2 tries). Both are
exact for exactly the episodes' sampling, and depend only on the group sizes, tries and
presentations.
"""

from __future__ import annotations

import functools
import itertools


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
