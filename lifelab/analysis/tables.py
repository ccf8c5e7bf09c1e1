"""A sweep's Parquet store as typed pandas tables: one sweep or several at once.

`load(sweep_dir_or_uri)` (or a list of them) reads the four tables of `<sweep>/results/` with
the store's live-row rule (lifelab.platform.store: one row per key, a resumed run superseding the
rows it re-reported) and returns a `SweepTables`:

  trials     one row per trial; `config_json` flattened into `config.<key>` columns (nested keys
             joined with '.', e.g. `config.stream.tasks`; lists become tuples so they hash); in
             a sweep over several learners a key of another learner is blank (NaN): the trial
             carried it but its learner never used it (lifelab.analysis.selection.foreign_keys)
  metrics    long: sweep, trial_id, iteration, time_s, name, value, run
  wide       one row per (sweep, trial_id, iteration), one column per metric name, plus time_s
  accuracy   the accuracy-matrix rows each trial computed itself:
             sweep, trial_id, iteration, trained_task, eval_task, accuracy, run, split
             (split "test" or "val": the test and the validation matrix; a store from before
             validation splits has no split column and reads as "test")
  events     PBT exploits: sweep, trial_id, iteration, kind, donor, old_config_json,
             new_config_json, time, run

dtypes: `sweep`, `trial_id`, `name`, `kind`, `donor` are categoricals in the long tables (one
million metric rows load in well under a second); integers are int64 (Int64 in `trials`, where
a value can be missing); everything else float64 or str. The `sweep` column holds the sweep's
label: its spec name (or a label you give), unique among the sweeps loaded together, so
(sweep, trial_id) identifies a trial.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa

from lifelab.analysis.formatting import flatten
from lifelab.analysis.selection import foreign_keys
from lifelab.errors import LifelabError, StorageError
from lifelab.platform.config import SearchSettings
from lifelab.platform.store import KEYS, SCHEMAS, ResultStore, live_rows, read_spec, takeovers

TABLES = tuple(SCHEMAS)
#: string columns read as categoricals (they repeat on every row)
CATEGORICAL = {
    "trials": (),
    "metrics": ("sweep", "trial_id", "name"),
    "accuracy": ("sweep", "trial_id"),
    "events": ("sweep", "trial_id", "kind", "donor"),
}
#: the continual-learning metrics learners report every round (lifelab.learners.base), each
#: with its validation twin `val_<name>` (lifelab.analysis.selection)
CL_COLUMNS = ("acc_avg", "bwt", "forgetting", "tasks_seen")
#: config keys that are seeds: trials differing only in these form one group
SEED_KEYS = ("seed", "stream.seed")


def sweep_uri(path: str) -> str:
    """A sweep dir as pyarrow reads it: an absolute local path, or the URI unchanged."""
    path = str(path)
    if path.startswith("file://"):
        path = path[len("file://"):]
    if "://" in path:
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class SweepTables:
    """The tables of one or more sweeps (see the module docstring for their columns)."""

    spec: dict                          # the (first) sweep's spec.yaml
    trials: pd.DataFrame
    metrics: pd.DataFrame
    accuracy: pd.DataFrame
    events: pd.DataFrame
    specs: dict[str, dict] = field(default_factory=dict)   # sweep label -> spec
    uris: dict[str, str] = field(default_factory=dict)     # sweep label -> sweep URI

    @cached_property
    def wide(self) -> pd.DataFrame:
        """Metrics in wide form: one row per (sweep, trial_id, iteration)."""
        return wide_metrics(self.metrics)

    @property
    def sweeps(self) -> list[str]:
        return list(self.specs) or [str(self.spec.get("name", ""))]

    def metric(self, sweep: str | None = None) -> tuple[str, str]:
        """(metric, mode) the sweep's search selected on (default as a spec's: val_acc_avg, max)."""
        spec = self.specs.get(sweep, self.spec) if sweep is not None else self.spec
        search = spec.get("search") or {}
        return (str(search.get("metric") or SearchSettings.metric),
                str(search.get("mode") or SearchSettings.mode))

    def metric_names(self, sweep: str | None = None) -> set[str]:
        """The names of the metrics recorded (by one sweep, or by any)."""
        m = self.metrics if sweep is None else self.metrics[self.metrics.sweep == sweep]
        return set(map(str, m.name.unique()))

    def sweep_of(self, trial_id: str, sweep: str | None = None) -> str:
        """The sweep label of a trial id (which must then be unambiguous) or check `sweep`."""
        hits = self.trials.loc[self.trials.trial_id == trial_id, "sweep"].unique().tolist()
        if not hits:
            hits = sorted(set(self.metrics.loc[self.metrics.trial_id == trial_id, "sweep"]))
        if sweep is not None:
            if sweep not in hits:
                raise LifelabError(f"trial {trial_id} is not in sweep {sweep}: use one of "
                                   f"{', '.join(map(str, hits)) or 'the trials table'}")
            return sweep
        if len(hits) != 1:
            raise LifelabError(f"trial {trial_id} is " + ("in several sweeps: pass sweep=..."
                               if hits else "not in these tables: see trials.trial_id"))
        return str(hits[0])

    def subset(self, sweep: str) -> SweepTables:
        """The tables of one of the sweeps loaded together."""
        if sweep not in self.sweeps:
            raise LifelabError(f"no sweep {sweep} here: use one of {', '.join(self.sweeps)}")
        if self.sweeps == [sweep]:
            return self
        frames = {}
        for table in TABLES:
            df = getattr(self, table)
            df = df[df.sweep == sweep].reset_index(drop=True)
            for col in CATEGORICAL[table]:
                df[col] = df[col].cat.remove_unused_categories()
            frames[table] = df
        return type(self)(spec=self.specs[sweep], specs={sweep: self.specs[sweep]},
                          uris={sweep: self.uris.get(sweep, "")}, **frames)


def load(sweeps: str | Sequence[str], *, labels: Sequence[str] | None = None,
         metric_names: Sequence[str] | None = None) -> SweepTables:
    """Every table of one sweep dir / URI, or of several (concatenated, told apart by `sweep`).

    `labels` name the sweeps (default: each spec's name, made unique); `metric_names` reads only
    those metrics (the filter is pushed down into the Parquet scan).
    """
    uris = [sweeps] if isinstance(sweeps, (str, os.PathLike)) else list(sweeps)
    if not uris:
        raise LifelabError("no sweep given: pass a sweep dir or a list of them")
    uris = [sweep_uri(u) for u in uris]
    specs = [read_spec(u) for u in uris]
    if labels is None:
        labels = _unique_labels([str(s.get("name") or u.rstrip("/").rsplit("/", 1)[-1])
                                 for s, u in zip(specs, uris, strict=True)])
    elif len(labels) != len(uris) or len(set(labels)) != len(labels):
        raise LifelabError("labels must name each sweep once: give as many distinct labels as "
                           "sweeps")
    frames: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES}
    for uri, label in zip(uris, labels, strict=True):
        # round_s comes with every result: with it, the ownership rule sees every result
        names = [*metric_names, "round_s"] if metric_names is not None else None
        raw = {table: read_table(uri, table, names if table == "metrics" else None,
                                 live=False) for table in TABLES}
        owners = takeovers(raw)          # one rule for which run owns an iteration, all tables
        if metric_names is not None:
            raw["metrics"] = raw["metrics"][raw["metrics"].name.isin(list(metric_names))]
        for table, df in raw.items():
            frames[table].append(_label(_live(table, df, owners), table, label))
    tables = {t: _typed(t, _concat(dfs)) for t, dfs in frames.items()}
    tables["trials"] = _own_config(tables["trials"])
    return SweepTables(spec=specs[0], specs=dict(zip(labels, specs, strict=True)),
                       uris=dict(zip(labels, uris, strict=True)), **tables)


def read_table(sweep: str, table: str, metric_names: Sequence[str] | None = None,
               live: bool = True) -> pd.DataFrame:
    """The live rows of one table of one sweep (categoricals as in the module docstring);
    `live=False`: every row of every visible part."""
    store = ResultStore(sweep_uri(sweep))
    cats = CATEGORICAL[table]
    if not store.parts(table):
        return _empty(table)
    try:
        df = store.read_raw(table, metric_names, dictionary=cats)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"cannot read results table {table} of {sweep} ({exc}): check the "
                           "path and that the storage is readable") from None
    for col in cats:
        df[col] = df[col].cat.reorder_categories(sorted(df[col].cat.categories))
    if table == "accuracy":     # rows from before validation splits were scored on test data
        df["split"] = df["split"].fillna("test")
    return _live(table, df) if live else df


def wide_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (sweep, trial_id, iteration), one column per metric, plus time_s."""
    index = ["sweep", "trial_id", "iteration"] if "sweep" in metrics else ["trial_id",
                                                                           "iteration"]
    if metrics.empty:
        return pd.DataFrame(columns=[*index, "time_s"])
    try:
        values = metrics.pivot(index=index, columns="name", values="value")
    except ValueError:      # a frame with repeated keys (not from `load`): the last one wins
        values = metrics.pivot_table(index=index, columns="name", values="value",
                                     aggfunc="last", observed=True)
    values.columns = values.columns.astype(str)
    values.columns.name = None
    times = metrics.groupby(index, observed=True, sort=False)["time_s"].max()
    wide = values.join(times).reset_index()
    for col in ("sweep", "trial_id"):
        if col in wide and isinstance(metrics[col].dtype, pd.CategoricalDtype):
            wide[col] = wide[col].astype(metrics[col].dtype)
    return wide


def final_metrics(tables: SweepTables) -> pd.DataFrame:
    """Each trial's last reported metrics, with its trials-table columns (`config.*` too)."""
    wide = tables.wide
    last = (wide.sort_values("iteration").groupby(["sweep", "trial_id"], observed=True)
            .tail(1).astype({"sweep": str, "trial_id": str}))
    trials = tables.trials.drop(columns=["iterations"], errors="ignore")
    out = trials.merge(last, on=["sweep", "trial_id"], how="outer")
    return out.sort_values(["sweep", "trial_id"]).reset_index(drop=True)


def varying_config_columns(trials: pd.DataFrame) -> list[str]:
    """The `config.*` columns whose value differs between trials (in any sweep loaded)."""
    out = []
    for col in trials.columns:
        if col.startswith("config.") and trials[col].astype(str).nunique(dropna=False) > 1:
            out.append(col)
    return out


# -- internals --------------------------------------------------------------------------------

def _live(table: str, df: pd.DataFrame, owners: pd.DataFrame | None = None) -> pd.DataFrame:
    keys = list(KEYS[table])
    if table != "trials" and (df.empty or df["run"].nunique() <= 1):
        # one run: nothing supersedes anything; only exact repeats of a key can be dropped
        df = df.drop_duplicates(subset=keys, keep="last")
        return df.sort_values(keys, kind="stable").reset_index(drop=True)
    return live_rows(table, df, owners)   # the store's rule: a newer run owns what it re-reported


def _empty(table: str) -> pd.DataFrame:
    df = SCHEMAS[table].empty_table().to_pandas()
    for col in CATEGORICAL[table]:
        df[col] = df[col].astype("category")
    return df


def _label(df: pd.DataFrame, table: str, label: str) -> pd.DataFrame:
    df = df.copy()
    if "sweep" in CATEGORICAL[table]:
        df["sweep"] = pd.Categorical.from_codes(np.zeros(len(df), dtype=np.int8), [label])
    else:
        df["sweep"] = label
    return df


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if len(frames) == 1:
        return frames[0]
    cats = [c for c in frames[0].columns if isinstance(frames[0][c].dtype, pd.CategoricalDtype)]
    unioned = {c: pd.api.types.union_categoricals([f[c] for f in frames], sort_categories=True,
                                                  ignore_order=True) for c in cats}
    out = pd.concat(frames, ignore_index=True)
    for col, values in unioned.items():
        out[col] = values
    return out


def _typed(table: str, df: pd.DataFrame) -> pd.DataFrame:
    if table != "trials":
        return df
    df = df.astype({"seed": "Int64", "iterations": "Int64", "sweep": str})
    configs = [flatten(json.loads(c)) if isinstance(c, str) and c else {}
               for c in df["config_json"]]
    flat = pd.DataFrame(configs, index=df.index)
    flat = flat.drop(columns=[c for c in flat if c == "learner"])
    flat.columns = [f"config.{c}" for c in flat.columns]
    return pd.concat([df, flat], axis=1).sort_values(["sweep", "trial_id"]).reset_index(drop=True)


def _own_config(trials: pd.DataFrame) -> pd.DataFrame:
    """Blank each trial's `config.*` columns of keys its learner lacks (another learner's keys,
    which every trial of a sweep over several learners carries unused)."""
    if trials.empty or trials.groupby("sweep").learner.nunique().max() < 2:
        return trials
    trials = trials.copy()
    for _, part in trials.groupby("sweep"):
        for learner, keys in foreign_keys(part.learner.dropna()).items():
            rows = part.index[part.learner == learner]
            cols = [c for c in trials if c.startswith("config.")
                    and c[len("config."):].split(".", 1)[0] in keys]
            for col in cols if len(rows) else ():
                if not pd.api.types.is_float_dtype(trials[col]):   # room for NaN
                    trials[col] = trials[col].astype(
                        float if pd.api.types.is_integer_dtype(trials[col]) else object)
                trials.loc[rows, col] = np.nan
    return trials


def _unique_labels(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out
