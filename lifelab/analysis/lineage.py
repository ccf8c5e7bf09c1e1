"""Lineage through PBT exploits: ancestry, hyperparameter schedules, full accuracy matrices.

What the store records (lifelab.searches.recording, lifelab.trainables.trainable):

- An exploit event (trial_id, iteration k, donor d, time w): the trial loaded d's checkpoint of
  iteration k and continued from there as iteration k + 1, under `new_config_json` (d's config,
  `old_config_json`, explored). The trial's own results after the exploit have iterations > k.
- The accuracy table holds, per trial, only the matrix rows the trial computed itself. A trial
  that exploited d continues d's matrix: rows for the tasks d had finished by iteration k are in
  d's rows (or further up d's lineage), not in the trial's. It holds two matrices per trial, told
  apart by `split`: "test" (what is reported) and "val" (what searches select on); each is
  rebuilt on its own, the test one by default.

So the state of trial t at its end descends through a chain of *segments*, newest first:

  (t, k_J, end]  ->  (d, k', k_J]  ->  (d', k'', k']  ->  ...  ->  (root, 0, k''']

where k_J is t's last exploit (by time) and the donor's part ends at the checkpoint t copied.
The donor's state at (iteration k, time w) is found the same way among the donor's exploits
that happened before w (event time) at an iteration < k; iterations strictly decrease along the
chain, so it always ends. A trial's full matrix (`accuracy_matrix(..., lineage=True)`, the
default) takes, per trained task, the row computed in the newest segment that has it: exactly
the matrix the learner held, from which it computed the acc_avg / bwt / forgetting it reported.

Limits (data the store does not keep): the store holds one row per (trial, iteration, eval task);
when an exploit sends a trial back to an earlier iteration than it had reached, its rows for the
iterations it repeats are replaced, so a later trial that had copied it in between sees the
replacements. And a trial's config before its first exploit is only known when the trial never
exploited (the trials table) or was itself a donor before (the event's old config); otherwise its
hyperparameter schedule starts unknown (NaN) until its first exploit.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lifelab.analysis.formatting import flatten, fmt_value
from lifelab.analysis.selection import foreign_keys
from lifelab.analysis.tables import SweepTables


@dataclass(frozen=True)
class Exploit:
    trial_id: str
    iteration: int          # the donor's checkpoint iteration the trial continued from
    donor: str
    time: float
    old_config: dict        # the donor's config at that checkpoint
    new_config: dict        # the trial's config from then on


@dataclass(frozen=True)
class Segment:
    """Iterations (start, end] of `trial_id`'s own training, under `config` (None: unknown)."""
    trial_id: str
    start: int
    end: int | None         # None: up to the trial's last iteration
    config: dict | None
    exploit: Exploit | None  # the exploit that started the segment (None: the trial's start)


class Lineage:
    """The exploit graph of one sweep's trials (build once, query many times)."""

    def __init__(self, tables: SweepTables, sweep: str):
        self.sweep = sweep
        events = tables.events
        events = events[(events.sweep == sweep) & (events.kind == "exploit")]
        self.exploits: dict[str, list[Exploit]] = defaultdict(list)
        order = events.assign(_t=events.time.fillna(-math.inf)).sort_values(
            ["_t", "iteration"], kind="stable")
        for e in order.itertuples(index=False):
            self.exploits[str(e.trial_id)].append(Exploit(
                str(e.trial_id), int(e.iteration), str(e.donor), float(e.time),
                _json(e.old_config_json), _json(e.new_config_json)))
        self.as_donor: dict[str, list[Exploit]] = defaultdict(list)
        for exploits in self.exploits.values():
            for ex in exploits:
                self.as_donor[ex.donor].append(ex)
        trials = tables.trials[tables.trials.sweep == sweep]
        self.final_config = {str(t): _json(c) for t, c in zip(trials.trial_id, trials.config_json,
                                                              strict=True)}

    def initial_config(self, trial_id: str) -> dict | None:
        """The config a trial started with, where the store shows it (see module docstring)."""
        own = self.exploits.get(trial_id, [])
        if not own:
            return self.final_config.get(trial_id)
        first = own[0]
        before = [ex for ex in self.as_donor.get(trial_id, [])
                  if ex.iteration <= first.iteration and _before(ex.time, first.time)]
        return before[-1].old_config if before else None

    def segments(self, trial_id: str) -> list[Segment]:
        """The chain of segments the trial's final state descends from, newest first."""
        chain: list[Segment] = []
        trial, end, before = trial_id, None, None
        while True:
            cands = [ex for ex in self.exploits.get(trial, [])
                     if (end is None or ex.iteration < end) and _before(ex.time, before)]
            if not cands:
                chain.append(Segment(trial, 0, end, self.initial_config(trial), None))
                return chain
            ex = cands[-1]
            chain.append(Segment(trial, ex.iteration, end, ex.new_config, ex))
            trial, end, before = ex.donor, ex.iteration, ex.time

    def own_segments(self, trial_id: str) -> list[Segment]:
        """The trial's own timeline: its start, then one segment per exploit (oldest first).

        The config at iteration i is that of the newest exploit (by time) with iteration < i.
        """
        out = [Segment(trial_id, 0, None, self.initial_config(trial_id), None)]
        out += [Segment(trial_id, ex.iteration, None, ex.new_config, ex)
                for ex in self.exploits.get(trial_id, [])]
        return out


def lineage_of(tables: SweepTables, sweep: str) -> Lineage:
    cache = tables.__dict__.setdefault("_lineage_cache", {})
    if sweep not in cache:
        cache[sweep] = Lineage(tables, sweep)
    return cache[sweep]


def foreign_of(tables: SweepTables, sweep: str) -> dict[str, frozenset[str]]:
    """{trial_id: the config keys of the sweep's other learners that its learner lacks}: carried
    by every trial of a sweep over several learners, used by none of this one's (never shown)."""
    cache = tables.__dict__.setdefault("_foreign_cache", {})
    if sweep not in cache:
        trials = tables.trials[tables.trials.sweep == sweep]
        by_learner = foreign_keys(trials.learner.dropna())
        cache[sweep] = {str(t): by_learner.get(str(learner), frozenset())
                        for t, learner in zip(trials.trial_id, trials.learner, strict=True)}
    return cache[sweep]


def own_keys(tables: SweepTables, sweep: str, trial_id: str, keys) -> list[str]:
    """The `keys` (flattened names) that are the trial's own (`foreign_of`)."""
    foreign = foreign_of(tables, sweep).get(str(trial_id), frozenset())
    return [k for k in keys if k.split(".", 1)[0] not in foreign]


def ancestry(tables: SweepTables, trial_id: str, sweep: str | None = None) -> pd.DataFrame:
    """Where a trial's final state came from: one row per segment, newest first.

    Columns: generation (0 = the trial itself), trial_id, from_iteration (exclusive),
    to_iteration (inclusive; the trial's last iteration for generation 0), exploit_time,
    config (dict, None when the store does not show it) and one `config.<key>` column per
    hyperparameter of the trial's learner that PBT changed in this sweep.
    """
    sweep = tables.sweep_of(trial_id, sweep)
    lineage = lineage_of(tables, sweep)
    keys = own_keys(tables, sweep, trial_id, mutated_keys(tables, sweep))
    last = _last_iterations(tables, sweep)
    rows = []
    for gen, seg in enumerate(lineage.segments(trial_id)):
        flat = flatten(seg.config)
        rows.append({"generation": gen, "trial_id": seg.trial_id, "from_iteration": seg.start,
                     "to_iteration": seg.end if seg.end is not None else last.get(seg.trial_id),
                     "exploit_time": seg.exploit.time if seg.exploit else np.nan,
                     "config": seg.config,
                     **{f"config.{k}": flat.get(k, np.nan) for k in keys}})
    out = pd.DataFrame(rows)
    out.insert(0, "sweep", sweep)
    return out.astype({"to_iteration": "Int64"})


def family_tree(tables: SweepTables) -> pd.DataFrame:
    """Every exploit as an edge donor -> trial, with the hyperparameters it changed.

    Columns: sweep, trial_id, iteration (the donor checkpoint), donor, time, changes (a
    "key: old -> new" string over the keys of the trial's learner the explore step changed).
    """
    events = tables.events[tables.events.kind == "exploit"]
    rows = []
    for e in events.itertuples(index=False):
        old, new = flatten(_json(e.old_config_json)), flatten(_json(e.new_config_json))
        keys = own_keys(tables, str(e.sweep), str(e.trial_id), sorted(set(old) | set(new)))
        changes = [f"{k}: {fmt_value(old.get(k))} -> {fmt_value(new.get(k))}"
                   for k in keys if old.get(k) != new.get(k)]
        rows.append({"sweep": str(e.sweep), "trial_id": str(e.trial_id),
                     "iteration": int(e.iteration), "donor": str(e.donor), "time": e.time,
                     "changes": "; ".join(changes)})
    columns = ["sweep", "trial_id", "iteration", "donor", "time", "changes"]
    return pd.DataFrame(rows, columns=columns).sort_values(["sweep", "time", "trial_id"],
                                                           kind="stable").reset_index(drop=True)


def mutated_keys(tables: SweepTables, sweep: str | None = None) -> list[str]:
    """Hyperparameters PBT changes: the spec's `search.mutations`, and any key an exploit
    changed (flattened names, e.g. `lr`)."""
    keys: set[str] = set()
    specs = {sweep: tables.specs.get(sweep, tables.spec)} if sweep else (tables.specs or
                                                                        {"": tables.spec})
    for spec in specs.values():
        keys |= set(((spec.get("search") or {}).get("mutations") or {}).keys())
    events = tables.events
    if sweep is not None:
        events = events[events.sweep == sweep]
    for old, new in zip(events.old_config_json, events.new_config_json, strict=True):
        o, n = flatten(_json(old)), flatten(_json(new))
        keys |= {k for k in set(o) | set(n) if o.get(k) != n.get(k)}
    return sorted(keys)


def schedules(tables: SweepTables, inherited: bool = False, keys: list[str] | None = None
              ) -> pd.DataFrame:
    """Each trial's hyperparameters at every iteration it reported (long form).

    Columns: sweep, trial_id, iteration, key, value (NaN where unknown), source_trial; only
    the keys of each trial's own learner.
    `inherited=False`: the config the trial itself ran under at each iteration it reported.
    `inherited=True`: the schedule its final state was trained with, following its ancestry
    (the iterations before its last exploit come from its donors; `source_trial` says whose).
    """
    rows = []
    for sweep in tables.sweeps:
        ks = keys if keys is not None else mutated_keys(tables, sweep)
        if not ks:
            continue
        lineage = lineage_of(tables, sweep)
        wide = tables.wide
        wide = wide[wide.sweep == sweep] if "sweep" in wide else wide
        iters = wide.groupby("trial_id", observed=True)["iteration"].agg(list).to_dict()
        for trial_id, its in iters.items():
            trial_id = str(trial_id)
            mine = own_keys(tables, sweep, trial_id, ks)
            if inherited:
                segs = lineage.segments(trial_id)
                last = max(its)
                for i in range(1, last + 1):
                    seg = next(s for s in segs if s.start < i and (s.end is None or i <= s.end))
                    rows += _schedule_rows(sweep, trial_id, i, seg, mine)
            else:
                own = lineage.own_segments(trial_id)
                for i in sorted(its):
                    seg = [s for s in own if s.start < i][-1]
                    rows += _schedule_rows(sweep, trial_id, i, seg, mine)
    columns = ["sweep", "trial_id", "iteration", "key", "value", "source_trial"]
    return pd.DataFrame(rows, columns=columns)


def lineage_accuracy(tables: SweepTables, lineage: bool = True, split: str = "test"
                     ) -> pd.DataFrame:
    """Every trial's accuracy-matrix rows in long form, completed through its ancestry.

    Columns: sweep, trial_id, trained_task, eval_task, accuracy, source_trial,
    source_iteration (who computed the row, at which iteration). `lineage=False` gives each
    trial's own rows only (the accuracy table, last row per trained task). `split`: the test
    matrix (default: what is reported) or the validation one ("val": what is selected on).
    """
    columns = ["sweep", "trial_id", "trained_task", "eval_task", "accuracy", "source_trial",
               "source_iteration"]
    acc = _split(tables.accuracy, split)
    if acc.empty:
        return pd.DataFrame(columns=columns)
    parts = []
    for sweep in tables.sweeps:
        own = acc[acc.sweep == sweep]
        if own.empty:
            continue
        by_trial = {str(t): g for t, g in own.groupby("trial_id", observed=True)}
        trial_ids = sorted(set(map(str, tables.trials.trial_id[tables.trials.sweep == sweep]))
                           | set(by_trial))
        lin = lineage_of(tables, sweep)
        for trial_id in trial_ids:
            segs = (lin.segments(trial_id) if lineage
                    else [Segment(trial_id, -1, None, None, None)])
            got = _rows_of(segs, by_trial)
            if got is not None:
                parts.append(got.assign(sweep=sweep, trial_id=trial_id))
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def accuracy_matrix(tables: SweepTables, trial_id: str, sweep: str | None = None,
                    lineage: bool = True, split: str = "test") -> pd.DataFrame:
    """A trial's accuracy matrix R: index trained_task, columns eval_task (NaN: not evaluated).

    `lineage=True` (default) completes it through the trial's PBT ancestry (module docstring);
    `lineage=False` shows only the rows the trial computed itself. `split`: "test" (default)
    or "val" (the validation matrix).
    """
    sweep = tables.sweep_of(trial_id, sweep)
    acc = _split(tables.accuracy, split)
    own = acc[acc.sweep == sweep]
    by_trial = {str(t): g for t, g in own.groupby("trial_id", observed=True)}
    segs = (lineage_of(tables, sweep).segments(trial_id) if lineage
            else [Segment(trial_id, -1, None, None, None)])
    rows = _rows_of(segs, by_trial)
    if rows is None:
        return pd.DataFrame(dtype=float)
    matrix = rows.pivot(index="trained_task", columns="eval_task", values="accuracy")
    matrix = matrix.reindex(index=range(int(matrix.index.max()) + 1))
    matrix.columns.name, matrix.index.name = "eval_task", "trained_task"
    return matrix.astype(float)


# -- internals --------------------------------------------------------------------------------

def _rows_of(segs: list[Segment], by_trial: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """Per trained task, the row from the newest segment that computed it."""
    picked: dict[int, pd.DataFrame] = {}
    for seg in segs:
        rows = by_trial.get(seg.trial_id)
        if rows is None:
            continue
        inside = rows[(rows.iteration > seg.start)
                      & ((rows.iteration <= seg.end) if seg.end is not None else True)]
        for task, group in inside.groupby("trained_task"):
            if int(task) not in picked:
                newest = group[group.iteration == group.iteration.max()]
                picked[int(task)] = newest.assign(source_trial=seg.trial_id)
    if not picked:
        return None
    out = pd.concat([picked[t] for t in sorted(picked)], ignore_index=True)
    out = out.rename(columns={"iteration": "source_iteration"})
    return out[["trained_task", "eval_task", "accuracy", "source_trial", "source_iteration"]]


def _split(acc: pd.DataFrame, split: str) -> pd.DataFrame:
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    return acc[acc.split == split] if "split" in acc else acc


def _schedule_rows(sweep: str, trial_id: str, iteration: int, seg: Segment, keys) -> list:
    flat = flatten(seg.config)
    return [{"sweep": sweep, "trial_id": trial_id, "iteration": iteration, "key": k,
             "value": flat.get(k, np.nan) if seg.config is not None else np.nan,
             "source_trial": seg.trial_id} for k in keys]


def _last_iterations(tables: SweepTables, sweep: str) -> dict[str, int]:
    m = tables.metrics
    m = m[m.sweep == sweep]
    return {str(k): int(v) for k, v in m.groupby("trial_id", observed=True)["iteration"]
            .max().items()}


def _before(t: float, bound: float | None) -> bool:
    """Event time t is before `bound` (unknown times do not constrain)."""
    return bound is None or not (math.isfinite(t) and math.isfinite(bound)) or t < bound


def _json(text) -> dict:
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
