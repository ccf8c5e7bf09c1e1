"""Continual-learning summaries per trial and per group of trials that differ only by seed.

The math is lifelab.platform.metrics; this module decides which matrix and which reference:

- Each trial's matrix is its full accuracy matrix through its PBT ancestry
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
- score: the trial's last reported value of the sweep's metric (what the search optimised).

Groups: trials of one learner whose configs are equal apart from seeds (`seed`, `stream.seed`)
and, in a PBT/PB2 sweep, apart from the mutated hyperparameters (a schedule, not a setting: a
group is then a learner's population). Groups span the sweeps loaded together unless
`by_sweep=True`, so one spec run as several sweeps with different seeds forms one group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lifelab.analysis.lineage import lineage_accuracy, lineage_of, mutated_keys
from lifelab.analysis.tables import SEED_KEYS, SweepTables, varying_config_columns
from lifelab.platform import metrics as clm

SUMMARY_METRICS = ("final_acc", "bwt", "fwt", "forgetting", "intransigence", "score")
MUTATED = "PBT"    # the group-key value of a hyperparameter PBT mutates


def matrices(tables: SweepTables, lineage: bool = True) -> dict[tuple[str, str], np.ndarray]:
    """{(sweep, trial_id): R} as float arrays (T x T', NaN where not evaluated)."""
    cached = _cached(tables, ("matrices", lineage), lambda: _matrices(tables, lineage))
    return {key: R.copy() for key, R in cached.items()}


def _matrices(tables: SweepTables, lineage: bool) -> dict[tuple[str, str], np.ndarray]:
    long = lineage_accuracy(tables, lineage=lineage)
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
    (rows of its matrix), final_acc, bwt, fwt, forgetting, intransigence, metric, score,
    exploits (how often it was exploited), and `config.*` (final config).
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
    rows = []
    for t in trials.itertuples(index=False):
        key = (t.sweep, t.trial_id)
        metric, _ = tables.metric(t.sweep)
        reported = last.loc[key] if key in last.index else None
        R = mats.get(key)
        row = {"sweep": t.sweep, "trial_id": t.trial_id, "learner": t.learner,
               "group": groups[key], "seed": t.seed, "status": t.status,
               "iteration": _get(reported, "iteration"),
               "tasks": 0 if R is None else len(R),
               **_cl(R, refs.get(t.sweep), bases.get(t.sweep), _get(reported, "fwt")),
               "metric": metric, "score": _get(reported, metric),
               "exploits": len(lineage_of(tables, t.sweep).exploits.get(t.trial_id, []))}
        rows.append(row)
    columns = ["sweep", "trial_id", "learner", "group", "seed", "status", "iteration", "tasks",
               "final_acc", "bwt", "fwt", "forgetting", "intransigence", "metric", "score",
               "exploits"]
    out = pd.DataFrame(rows, columns=columns).astype({"seed": "Int64", "iteration": "Int64",
                                                      "tasks": int, "exploits": int})
    config = [c for c in trials.columns if c.startswith("config.")]
    out = out.merge(trials[["sweep", "trial_id", *config]], on=["sweep", "trial_id"],
                    how="left")
    return out


def group_summary(tables: SweepTables, by_sweep: bool = False,
                  reference: str | Sequence | Mapping | None = "joint",
                  baseline: Sequence | Mapping | None = None,
                  lineage: bool = True) -> pd.DataFrame:
    """Mean and standard error of the mean (SEM, ddof=1; NaN for one trial) of each summary
    metric over the trials of each group, best group first by mean score.

    Columns: group, learner, sweeps, n, then <m>_mean and <m>_sem for m in SUMMARY_METRICS.
    """
    summary = trial_summary(tables, reference=reference, baseline=baseline, lineage=lineage,
                            by_sweep=by_sweep)
    columns = ["group", "learner", "sweeps", "n", *(f"{m}_{s}" for m in SUMMARY_METRICS
                                                    for s in ("mean", "sem"))]
    if summary.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for group, g in summary.groupby("group", sort=False):
        row = {"group": group, "learner": g.learner.iloc[0],
               "sweeps": ", ".join(sorted(set(g.sweep))), "n": len(g)}
        for m in SUMMARY_METRICS:
            row[f"{m}_mean"], row[f"{m}_sem"] = mean_sem(g[m])
        rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    _, mode = tables.metric()
    return out.sort_values("score_mean", ascending=(mode == "min"), na_position="last",
                           kind="stable").reset_index(drop=True)


def leaderboard(tables: SweepTables, reference: str | Sequence | Mapping | None = "joint",
                baseline: Sequence | Mapping | None = None, lineage: bool = True,
                by_sweep: bool = False) -> pd.DataFrame:
    """Every trial's summary, best first by the sweep's metric (per sweep, in load order), with
    a `rank` per sweep and only the `config.*` columns that vary."""
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
        key = {c: v for c, v in key.items() if not _missing(v)}
        if by_sweep:
            key["sweep"] = t["sweep"]
        keys.append((t["learner"], key))
    shown = sorted({c for _, k in keys for c in k
                    if len({repr(kk.get(c)) for _, kk in keys}) > 1})
    out = {}
    for t, (learner, key) in zip(trials.itertuples(index=False), keys, strict=True):
        parts = [f"{c.removeprefix('config.')}={_fmt(key[c])}" for c in shown if c in key]
        out[(t.sweep, t.trial_id)] = " ".join([str(learner), *parts])
    return out


# -- internals --------------------------------------------------------------------------------

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
    elif reported_fwt is not None and not _missing(reported_fwt):
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
    return None if _missing(value) else value


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)
