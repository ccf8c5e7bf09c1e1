"""Continual-learning summaries per trial and per group of trials that differ only by seed.

What is selected and what is reported (lifelab.analysis.selection): trials, groups and each
learner's best trial are ranked by `score`, the last reported value of the sweep's metric (by
default `val_acc_avg`, on the validation split); the numbers reported beside it come from the
test split: `test_score` (the metric's test twin, e.g. `acc_avg`) and the CL summaries below. A
continual-learning metric counts at the end of the stream (for a running trial, at its last
round), never at its best round (the first task's accuracy).

The math is lifelab.platform.metrics; this module decides which matrix and which reference:

- Each trial's matrix is its full test accuracy matrix through its PBT ancestry
  (lifelab.analysis.lineage), i.e. the matrix the learner held at its end.
- final_acc: mean of the last row; bwt, forgetting: from the whole matrix.
- intransigence needs a* (accuracy on task k of a model trained jointly on tasks 0..k). By
  default a*[k] is the mean over the sweep's `joint` trials of their R[k, k] (the joint learner
  trains on every task seen so far, so its R[k, k] is exactly that model); pass `reference`
  (a sequence, a {sweep: sequence} mapping, another learner name, or None) to change it.
- fwt needs R[j-1, j] (each task evaluated before it is trained) and b (an untrained model's
  accuracy per task): with a `baseline` and such a matrix it is computed here; otherwise it is the
  trial's last reported `fwt` metric if it reported one, else NaN (the baseline learners only
  evaluate tasks they have seen).
- score: the trial's last reported value of the sweep's metric (what the search selected on);
  test_score: the last reported value of its test twin (NaN for a metric without twins).

Groups: trials of one learner whose configs are equal apart from seeds (`seed`, `stream.seed`)
and, in a PBT/PB2 sweep, apart from the mutated hyperparameters (a schedule, not a setting).
Groups span the sweeps loaded together unless `by_sweep=True`, so one spec run as several sweeps
with different seeds forms one group.

Mean ± SEM only over independent runs: trials that differ by seed only, with no PBT exploit
between them. The members of one PBT/PB2 population (a sweep's trials of one `search.group_by`
value, by default one learner) copy each other's weights, so a population is ONE result: its
selected member (the best score), reported without ±. A group's `n` counts independent runs:
each fifo / ASHA trial, and each population once (its `selected` member); ± appears across
several sweeps of one spec with different seeds loaded together, or across fifo trials that
differ only by seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lifelab.analysis.formatting import fmt_value, missing
from lifelab.analysis.lineage import lineage_accuracy, lineage_of, mutated_keys
from lifelab.analysis.selection import test_metric
from lifelab.analysis.tables import SEED_KEYS, SweepTables, varying_config_columns
from lifelab.platform import metrics as clm

#: the accuracy of each incremental view, as learners report it beside acc_avg (in scenario
#: class acc_avg is class-incremental and acc_avg_til the task-incremental view; in scenario task
#: the other way round)
VIEW_METRICS = ("acc_avg_til", "acc_avg_cil")
SUMMARY_METRICS = ("score", "test_score", *VIEW_METRICS, "final_acc", "bwt", "fwt",
                   "forgetting", "intransigence")
MUTATED = "PBT"    # the group-key value of a hyperparameter PBT mutates


def matrices(tables: SweepTables, lineage: bool = True, split: str = "test"
             ) -> dict[tuple[str, str], np.ndarray]:
    """{(sweep, trial_id): R} as float arrays (T x T', NaN where not evaluated); the test
    matrices by default, the validation ones with split="val"."""
    cached = _cached(tables, ("matrices", lineage, split),
                     lambda: _matrices(tables, lineage, split))
    return {key: R.copy() for key, R in cached.items()}


def _matrices(tables: SweepTables, lineage: bool, split: str
              ) -> dict[tuple[str, str], np.ndarray]:
    long = lineage_accuracy(tables, lineage=lineage, split=split)
    out = {}
    for (sweep, trial), g in long.groupby(["sweep", "trial_id"], sort=True):
        T = int(g.trained_task.max()) + 1
        width = max(T, int(g.eval_task.max()) + 1)
        R = np.full((T, width), np.nan)
        R[g.trained_task.to_numpy(int), g.eval_task.to_numpy(int)] = g.accuracy.to_numpy(float)
        out[(str(sweep), str(trial))] = R
    return out


def reference_accuracies(tables: SweepTables, learner: str = "joint",
                         mats: Mapping | None = None) -> dict[str, np.ndarray]:
    """{sweep: a*}: per task k, the mean R[k, k] over the sweep's trials of `learner`."""
    mats = matrices(tables) if mats is None else mats
    out = {}
    for sweep in tables.sweeps:
        ids = tables.trials.trial_id[(tables.trials.sweep == sweep)
                                     & (tables.trials.learner == learner)]
        diags = [np.diag(mats[(sweep, t)][:, :len(mats[(sweep, t)])]) for t in ids
                 if (sweep, t) in mats]
        if diags:
            T = max(len(d) for d in diags)
            stack = np.full((len(diags), T), np.nan)
            for i, d in enumerate(diags):
                stack[i, :len(d)] = d
            finite = np.isfinite(stack)
            counts = finite.sum(axis=0)
            sums = np.where(finite, stack, 0.0).sum(axis=0)
            out[sweep] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def trial_summary(tables: SweepTables, reference: str | Sequence | Mapping | None = "joint",
                  baseline: Sequence | Mapping | None = None, lineage: bool = True,
                  by_sweep: bool = False) -> pd.DataFrame:
    """One row per trial: its CL summary (module docstring) and its group.

    Columns: sweep, trial_id, learner, group, seed, status, iteration (last reported), tasks
    (rows of its test matrix), final_acc, bwt, fwt, forgetting, intransigence (test), metric,
    score (selected on), test_metric, test_score (reported), acc_avg_til and acc_avg_cil (the
    last reported task- and class-incremental test accuracies; NaN where the learner or the
    scenario has none), population (its PBT population,
    None outside PBT), selected (it counts as an independent run: every trial outside PBT, the
    best-scoring member of each population within its group), exploits (how often it was
    exploited), and `config.*` (final config).
    """
    key = ("trial_summary", _key(reference), _key(baseline), lineage, by_sweep)
    if key[1] is None or key[2] is None:      # arrays: not worth caching
        return _trial_summary(tables, reference, baseline, lineage, by_sweep)
    return _cached(tables, key, lambda: _trial_summary(tables, reference, baseline, lineage,
                                                       by_sweep)).copy()


def _trial_summary(tables, reference, baseline, lineage, by_sweep) -> pd.DataFrame:
    mats = matrices(tables, lineage=lineage)
    refs = _per_sweep(tables, reference, mats)
    bases = _per_sweep(tables, baseline, mats) if not isinstance(baseline, str) else {}
    wide = tables.wide
    last = (wide.sort_values("iteration").groupby(["sweep", "trial_id"], observed=True).tail(1)
            .astype({"sweep": str, "trial_id": str}).set_index(["sweep", "trial_id"]))
    trials = _all_trials(tables)
    groups = group_labels(tables, trials, by_sweep=by_sweep)
    populations = _populations(tables, trials)
    tests = {s: test_metric(tables.metric(s)[0], tables.metric_names(s)) for s in tables.sweeps}
    rows = []
    for t in trials.itertuples(index=False):
        key = (t.sweep, t.trial_id)
        metric, _ = tables.metric(t.sweep)
        test = tests.get(t.sweep)
        reported = last.loc[key] if key in last.index else None
        R = mats.get(key)
        row = {"sweep": t.sweep, "trial_id": t.trial_id, "learner": t.learner,
               "group": groups[key], "seed": t.seed, "status": t.status,
               "iteration": _get(reported, "iteration"),
               "tasks": 0 if R is None else len(R),
               **_cl(R, refs.get(t.sweep), bases.get(t.sweep), _get(reported, "fwt")),
               "metric": metric, "score": _get(reported, metric),
               "test_metric": test, "test_score": _get(reported, test) if test else None,
               **{view: _get(reported, view) for view in VIEW_METRICS},
               "population": populations.get(key), "selected": True,
               "exploits": len(lineage_of(tables, t.sweep).exploits.get(t.trial_id, []))}
        rows.append(row)
    columns = ["sweep", "trial_id", "learner", "group", "seed", "status", "iteration", "tasks",
               "final_acc", "bwt", "fwt", "forgetting", "intransigence", "metric", "score",
               "test_metric", "test_score", *VIEW_METRICS, "population", "selected",
               "exploits"]
    out = pd.DataFrame(rows, columns=columns).astype({
        "seed": "Int64", "iteration": "Int64", "tasks": int, "exploits": int, "score": float,
        "test_score": float, **dict.fromkeys(VIEW_METRICS, float)})
    out["selected"] = _selected(tables, out)
    config = [c for c in trials.columns if c.startswith("config.")]
    out = out.merge(trials[["sweep", "trial_id", *config]], on=["sweep", "trial_id"],
                    how="left")
    return out


def group_summary(tables: SweepTables, by_sweep: bool = False,
                  reference: str | Sequence | Mapping | None = "joint",
                  baseline: Sequence | Mapping | None = None,
                  lineage: bool = True) -> pd.DataFrame:
    """Mean and standard error of the mean (SEM, ddof=1; NaN for one run) of each summary
    metric over the independent runs of each group, best group first by mean score (selected
    on validation; the test numbers beside it).

    Independent runs only (module docstring): trials that differ by seed only, with no PBT
    exploit between them. A PBT/PB2 population is one run, its selected member, never a sample
    of several: one PBT sweep gives each group one value and no ±; several sweeps of the spec
    with different seeds, loaded together, give ± over their populations.

    Columns: group, learner, sweeps, n (independent runs), trials (all trials of the group),
    then <m>_mean and <m>_sem for m in SUMMARY_METRICS.
    """
    summary = trial_summary(tables, reference=reference, baseline=baseline, lineage=lineage,
                            by_sweep=by_sweep)
    columns = ["group", "learner", "sweeps", "n", "trials",
               *(f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "sem"))]
    if summary.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for group, g in summary.groupby("group", sort=False):
        runs = g[g.selected]
        row = {"group": group, "learner": g.learner.iloc[0],
               "sweeps": ", ".join(sorted(set(g.sweep))), "n": len(runs), "trials": len(g)}
        for m in SUMMARY_METRICS:
            row[f"{m}_mean"], row[f"{m}_sem"] = mean_sem(runs[m])
        rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    _, mode = tables.metric()
    return out.sort_values("score_mean", ascending=(mode == "min"), na_position="last",
                           kind="stable").reset_index(drop=True)


def leaderboard(tables: SweepTables, reference: str | Sequence | Mapping | None = "joint",
                baseline: Sequence | Mapping | None = None, lineage: bool = True,
                by_sweep: bool = False) -> pd.DataFrame:
    """Every trial's summary, best first by the sweep's metric (`score`: selected on validation,
    per sweep, in load order; `test_score` and the CL summaries beside it are test numbers),
    with a `rank` per sweep and only the `config.*` columns that vary."""
    summary = trial_summary(tables, reference=reference, baseline=baseline, lineage=lineage,
                            by_sweep=by_sweep)
    if summary.empty:
        return summary.assign(rank=pd.Series(dtype=int))
    parts = []
    for sweep in tables.sweeps:
        part = summary[summary.sweep == sweep]
        _, mode = tables.metric(sweep)
        part = part.sort_values("score", ascending=(mode == "min"), na_position="last",
                                kind="stable")
        parts.append(part.assign(rank=range(1, len(part) + 1)))
    out = pd.concat(parts, ignore_index=True)
    constant = [c for c in out if c.startswith("config.")
                and c not in varying_config_columns(tables.trials)]
    out = out.drop(columns=constant)
    return out[["rank", *(c for c in out if c != "rank")]]


def mean_sem(values: pd.Series) -> tuple[float, float]:
    """Mean and SEM (sample std / sqrt(n), ddof=1) of the finite values; SEM NaN if n < 2."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    sem = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(np.mean(v)), sem


def group_labels(tables: SweepTables, trials: pd.DataFrame | None = None,
                 by_sweep: bool = False) -> dict[tuple[str, str], str]:
    """{(sweep, trial_id): group label}: the learner, then the group's config that differs
    from other groups (key=value; a PBT-mutated key shows as key=PBT)."""
    trials = _all_trials(tables) if trials is None else trials
    config = [c for c in trials.columns if c.startswith("config.")
              and c[len("config."):] not in SEED_KEYS]
    mutated = {s: set(mutated_keys(tables, s)) if _is_pbt(tables.specs.get(s, tables.spec))
               else set() for s in set(trials.sweep)}
    keys = []
    for t in trials.to_dict("records"):
        key = {c: (MUTATED if c[len("config."):] in mutated[t["sweep"]] else t[c])
               for c in config}
        key = {c: v for c, v in key.items() if not missing(v)}
        if by_sweep:
            key["sweep"] = t["sweep"]
        keys.append((t["learner"], key))
    shown = sorted({c for _, k in keys for c in k
                    if len({repr(kk.get(c)) for _, kk in keys}) > 1})
    out = {}
    for t, (learner, key) in zip(trials.itertuples(index=False), keys, strict=True):
        parts = [f"{c.removeprefix('config.')}={fmt_value(key[c])}" for c in shown if c in key]
        out[(t.sweep, t.trial_id)] = " ".join([str(learner), *parts])
    return out


# -- internals --------------------------------------------------------------------------------

def _populations(tables: SweepTables, trials: pd.DataFrame) -> dict[tuple[str, str], str]:
    """{(sweep, trial_id): its PBT population} for the trials of PBT/PB2 sweeps: the trials that
    exploit each other, i.e. share the value of `search.group_by` (all of them without it)."""
    out = {}
    for t in trials.to_dict("records"):
        spec = tables.specs.get(t["sweep"], tables.spec)
        if not _is_pbt(spec):
            continue
        by = (spec.get("search") or {}).get("group_by", "learner")
        keys = [] if by is None else [by] if isinstance(by, str) else list(by)
        values = [f"{k}={fmt_value(t['learner'] if k == 'learner' else t.get(f'config.{k}'))}"
                  for k in keys]
        out[(t["sweep"], t["trial_id"])] = "/".join([t["sweep"], *values])
    return out


def _selected(tables: SweepTables, summary: pd.DataFrame) -> pd.Series:
    """True for each independent run: every trial outside PBT, and per group the best-scoring
    member of each PBT population (by the sweep's metric and mode; ties: the first trial)."""
    selected = summary.population.isna()
    for _, pop in summary[~selected].groupby(["group", "population"], sort=False):
        mode = tables.metric(pop.sweep.iloc[0])[1]
        best = pop.sort_values("score", ascending=(mode == "min"), na_position="last",
                               kind="stable").index[0]
        selected[best] = True
    return selected.astype(bool)


def _all_trials(tables: SweepTables) -> pd.DataFrame:
    """The trials table plus trials that reported metrics but have no trials row yet."""
    trials = tables.trials.copy()
    seen = set(zip(trials.sweep, trials.trial_id, strict=True))
    extra = [(str(s), str(t)) for s, t in tables.metrics[["sweep", "trial_id"]]
             .drop_duplicates().itertuples(index=False) if (str(s), str(t)) not in seen]
    if extra:
        add = pd.DataFrame(extra, columns=["sweep", "trial_id"]).assign(status="RUNNING")
        trials = pd.concat([trials, add], ignore_index=True)
    trials["learner"] = trials["learner"].fillna("?") if "learner" in trials else "?"
    return trials.sort_values(["sweep", "trial_id"]).reset_index(drop=True)


def _cl(R, ref, base, reported_fwt) -> dict:
    nan = math.nan
    out = {"final_acc": nan, "bwt": nan, "fwt": nan, "forgetting": nan, "intransigence": nan}
    if R is None or len(R) == 0:
        return out
    try:
        A = clm.accuracy_matrix(R)
    except ValueError:          # a missing row (e.g. a donor's rows lost): no summary
        return out
    T = len(A)
    out.update(final_acc=clm.average_accuracy(A), bwt=clm.backward_transfer(A),
               forgetting=clm.forgetting(A))
    if ref is not None and len(ref) >= T and np.all(np.isfinite(ref[:T])):
        out["intransigence"] = clm.intransigence(A, ref[:T])
    if base is not None and len(base) >= T and T >= 2 and np.all(
            np.isfinite([A[j - 1, j] for j in range(1, T)])):
        out["fwt"] = clm.forward_transfer(A, np.asarray(base, float)[:T])
    elif reported_fwt is not None and not missing(reported_fwt):
        out["fwt"] = float(reported_fwt)
    return out


def _cached(tables: SweepTables, key: tuple, compute):
    """Memoise on the (immutable) tables object."""
    cache = tables.__dict__.setdefault("_analysis_cache", {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _key(value):
    """A cache key for a reference / baseline argument: strings and None only."""
    return ("str", value) if isinstance(value, str) else ("none",) if value is None else None


def _per_sweep(tables: SweepTables, value, mats) -> dict[str, np.ndarray]:
    if value is None:
        return {}
    if isinstance(value, str):
        return reference_accuracies(tables, value, mats)
    if isinstance(value, Mapping):
        return {str(k): np.asarray(v, float) for k, v in value.items()}
    return {s: np.asarray(value, float) for s in tables.sweeps}


def _is_pbt(spec: dict) -> bool:
    return str((spec.get("search") or {}).get("scheduler", "")).lower() in ("pbt", "pb2")


def _get(row, key):
    if row is None or key not in row.index:
        return None
    value = row[key]
    return None if missing(value) else value
