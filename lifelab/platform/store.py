"""The Parquet results store of a sweep: fixed-schema tables under `<sweep>/results/<table>/`.

Every write is a new part file, written under a hidden temporary name and then renamed, so a
reader (`pd.read_parquet('<sweep>/results/metrics')`, which skips hidden files) sees whole
parts only.

Each row carries `run`: the start time (ns) of the driver that wrote it. After a crash and resume,
a trial re-reports the iterations after its last checkpoint. One rule decides, per trial, which
run owns each iteration, the same for every table: a run takes over a trial from the first result
it reported for it (its first metrics row: every result writes metrics first), and owns it until a
newer run takes over. Rows of a run at iterations it does not own are superseded, in every table:
an exploit or an accuracy row of a lost future does not outlive the metrics of that future.
`read` applies that rule; `compact` rewrites a table into one part holding only the live rows,
so that after a sweep ends the raw files hold exactly one row per key. During a sweep the driver
batches rows and merges small parts into bigger ones (lifelab.platform.store_writer), so a table
is a handful of files at any time.

A part that cannot be read (truncated, corrupted, wrongly typed) is skipped by every reader with
one warning line naming it; nothing ever deletes it.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from lifelab.errors import ConfigError, StorageError
from lifelab.platform.yamlsafe import load_yaml

SCHEMAS: dict[str, pa.Schema] = {
    "trials": pa.schema([
        ("sweep", pa.string()), ("trial_id", pa.string()), ("learner", pa.string()),
        ("seed", pa.int64()), ("config_json", pa.string()), ("status", pa.string()),
        ("error", pa.string()), ("iterations", pa.int64()), ("node", pa.string()),
        ("ray_version", pa.string()), ("torch_version", pa.string()),
        ("written_at", pa.float64()), ("run", pa.int64()),
    ]),
    "metrics": pa.schema([
        ("sweep", pa.string()), ("trial_id", pa.string()), ("iteration", pa.int64()),
        ("time_s", pa.float64()), ("name", pa.string()), ("value", pa.float64()),
        ("run", pa.int64()),
    ]),
    "accuracy": pa.schema([
        ("sweep", pa.string()), ("trial_id", pa.string()), ("iteration", pa.int64()),
        ("trained_task", pa.int64()), ("eval_task", pa.int64()), ("accuracy", pa.float64()),
        ("run", pa.int64()),
        ("split", pa.string()),          # "test" or "val" (the split the row was scored on)
    ]),
    "events": pa.schema([
        ("sweep", pa.string()), ("trial_id", pa.string()), ("iteration", pa.int64()),
        ("kind", pa.string()), ("donor", pa.string()), ("old_config_json", pa.string()),
        ("new_config_json", pa.string()), ("time", pa.float64()), ("run", pa.int64()),
    ]),
}

SPEC_FILE = "spec.yaml"
OBJECT_STORES = ("s3", "gcs")       # pyarrow filesystem type names

# The columns that identify one fact; a table holds one live row per key.
KEYS: dict[str, tuple[str, ...]] = {
    "trials": ("trial_id",),
    "metrics": ("trial_id", "iteration", "name"),
    "accuracy": ("trial_id", "iteration", "trained_task", "eval_task", "split"),
    "events": ("trial_id", "iteration", "kind"),
}


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and path for a local path, file://, s3:// or gs:// URI."""
    try:
        if "://" not in uri:
            return pafs.LocalFileSystem(), str(_absolute(uri))
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise StorageError(f"storage '{uri}' is not usable ({exc}): "
                           "give a local path or an s3:// / gs:// URI") from None


def _absolute(path: str):
    from pathlib import Path
    return Path(path).expanduser().resolve()


def join(base: str, *parts: str) -> str:
    """Join URI or path segments with '/' (pyarrow paths always use '/')."""
    return "/".join([base.rstrip("/"), *parts])


class ResultStore:
    """Append-only Parquet tables of one sweep, at `<sweep_uri>/results`."""

    def __init__(self, sweep_uri: str, run: int | None = None):
        self.fs, self.root = resolve(join(sweep_uri, "results"))
        self.run = run if run is not None else time.time_ns()

    def table_dir(self, table: str) -> str:
        _check_table(table)
        return join(self.root, table)

    def append(self, table: str, rows: Iterable[dict]) -> None:
        """Write rows as one new part file (atomically); `run` is filled in when missing."""
        _check_table(table)
        rows = [{"run": self.run, **row} for row in rows]
        if not rows:
            return
        arrow = pa.Table.from_pylist(rows, schema=SCHEMAS[table])
        self.write_part(table, arrow)

    def read(self, table: str, names: Iterable[str] | None = None) -> pd.DataFrame:
        """The live rows of a table (see module docstring), in key order. `names` (metrics only):
        read just those metric names; `round_s`, which every result reports, is read too, so the
        ownership rule still sees every result."""
        raw = (self.read_raw(table) if names is None else   # strings as categoricals: faster
               self.read_raw(table, [*names, "round_s"], dictionary=("sweep", "trial_id", "name")))
        if table == "trials":
            return live_rows(table, raw)
        owners = self.owners({table: raw}) if names is None else takeovers({table: raw})
        rows = live_rows(table, raw, owners)
        return rows if names is None else rows[rows.name.isin(list(names))]

    def owners(self, known: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
        """`takeovers` of the whole sweep: which run owns which iterations of each trial."""
        known = dict(known or {})
        return takeovers({t: known[t] if t in known else self.read_raw(t)
                          for t in SCHEMAS if t != "trials"})

    def compact(self, table: str, owners: pd.DataFrame | None = None) -> None:
        """Rewrite a table as one part of its live rows, then delete the parts it replaces.

        A crash between the two steps leaves exact copies, which `read` and the next compaction
        drop; no live row is ever lost.
        """
        old_parts, unreadable = self.parts(table), []
        raw = self.read_raw(table, parts=old_parts, unreadable=unreadable)
        old_parts = [p for p in old_parts if p not in unreadable]     # never deleted
        if owners is None and table != "trials":
            owners = self.owners({table: raw})
        live = live_rows(table, raw, owners)
        if len(old_parts) <= 1 and len(live) == len(raw):
            return
        self.write_part(table, pa.Table.from_pandas(live, schema=SCHEMAS[table],
                                                     preserve_index=False))
        for part in old_parts:
            self.delete_part(part)

    def compact_all(self) -> None:
        """Compact every table and delete the temporary files of writes a crash interrupted
        (their rows are re-reported after resume). Only when no one else writes: at the end."""
        owners = self.owners()      # taken once, before any table loses superseded rows
        for table in SCHEMAS:
            self.compact(table, owners)
            selector = pafs.FileSelector(self.table_dir(table), allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.base_name.startswith(".tmp-"):
                    self.fs.delete_file(info.path)

    # -- internals -----------------------------------------------------------------------------

    def write_part(self, table: str, arrow: pa.Table) -> str:
        """Write one part atomically (a hidden temporary name, then a rename; on object storage,
        where an object appears whole or not at all, directly: a rename there is a copy); its
        path."""
        directory = self.table_dir(table)
        name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = join(directory, f".tmp-{name}")
        try:
            self.fs.create_dir(directory, recursive=True)
            if self.fs.type_name in OBJECT_STORES:
                pq.write_table(arrow, join(directory, name), filesystem=self.fs)
                return join(directory, name)
            pq.write_table(arrow, tmp, filesystem=self.fs)
            self.fs.move(tmp, join(directory, name))
        except OSError as exc:
            raise StorageError(f"cannot write results to {directory} ({exc}): "
                               "check that the storage exists and is writable") from None
        return join(directory, name)


    def delete_part(self, path: str) -> None:
        self.fs.delete_file(path)

    def parts(self, table: str) -> list[str]:
        """The visible part files of a table, oldest first (names start with the write time)."""
        selector = pafs.FileSelector(self.table_dir(table), allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise StorageError(f"cannot list results in {self.table_dir(table)} ({exc}): check "
                               "the path and that the storage is readable") from None
        return sorted(info.path for info in infos
                      if info.type == pafs.FileType.File
                      and info.base_name.endswith(".parquet")
                      and not info.base_name.startswith((".", "_")))


    def scan(self, table: str, parts: list[str], names: Iterable[str] | None = None,
             dictionary: Iterable[str] = (), unreadable: list[str] | None = None
             ) -> pa.Table | None:
        """The rows of these parts as one Arrow table (`names`: only those metric names,
        pushed down into the scan; `dictionary`: string columns read as dictionaries). An
        unreadable part is skipped with a warning and added to `unreadable`; None when the only
        part is unreadable."""
        dictionary = tuple(dictionary)
        schema = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string()))
                            if f.name in dictionary else f for f in SCHEMAS[table]])
        fmt = ds.ParquetFileFormat(
            read_options=ds.ParquetReadOptions(dictionary_columns=dictionary))
        where = ds.field("name").isin(list(names)) if names is not None else None
        try:
            return ds.dataset(parts, schema=schema, format=fmt,
                              filesystem=self.fs).to_table(filter=where)
        except (OSError, pa.ArrowException):
            if len(parts) > 1:            # find the damaged part(s); the others are read
                tables = [t for p in parts if (t := self.scan(table, [p], names, dictionary,
                                                              unreadable)) is not None]
                return pa.concat_tables(tables) if tables else schema.empty_table()
        if self.fs.get_file_info(parts[0]).type == pafs.FileType.NotFound:
            raise FileNotFoundError(parts[0])     # replaced by a merge meanwhile: list again
        _warn_unreadable(parts[0])
        if unreadable is not None:
            unreadable.append(parts[0])
        return None

    def read_raw(self, table: str, names: Iterable[str] | None = None,
                 parts: list[str] | None = None, dictionary: Iterable[str] = (),
                 unreadable: list[str] | None = None) -> pd.DataFrame:
        """Every row of every readable part (of `parts`, default all), superseded ones too."""
        for _ in range(5):     # the driver may merge parts between our listing and reading
            try:
                found = self.parts(table) if parts is None else parts
                arrow = self.scan(table, found, names, dictionary, unreadable) if found else None
                break
            except FileNotFoundError:
                if parts is not None:
                    raise
        else:
            raise StorageError(f"results table {table} of {self.root} kept changing while "
                               "being read: try again")
        return (arrow if arrow is not None else SCHEMAS[table].empty_table()).to_pandas()


_warned: set[str] = set()


def _warn_unreadable(path: str) -> None:
    if path not in _warned:
        _warned.add(path)
        print(f"lifelab: warning: skipping unreadable results part {path}: its rows are left "
              "out; delete the file to silence this", file=sys.stderr, flush=True)


def result_iteration(table: str, df: pd.DataFrame) -> pd.Series:
    """The iteration of the result that wrote each row. An exploit event names the iteration of
    the donor checkpoint the trial continued from; its next result (one later) reports it."""
    return df["iteration"] + 1 if table == "events" else df["iteration"]


def takeovers(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per trial and run: `start`, the first result iteration the run reported for the trial, and
    `until`, where a newer run took over (inf for none). Metrics decide (every result writes them
    first); the other tables only stand in for a run whose metrics rows are gone."""
    firsts = {}
    for table, df in frames.items():
        if table == "trials" or df is None or df.empty:
            continue
        its = df[["trial_id", "run"]].assign(_it=result_iteration(table, df).to_numpy())
        first = its.groupby(["trial_id", "run"], observed=True)["_it"].min()
        # trial ids as str (a table read with categoricals): after grouping, it is cheaper
        firsts[table] = first.set_axis(first.index.set_levels(
            first.index.levels[0].astype(str), level=0))
    if not firsts:
        return pd.DataFrame({"trial_id": pd.Series(dtype=str), "run": pd.Series(dtype="int64"),
                             "start": pd.Series(dtype=float), "until": pd.Series(dtype=float)})
    both = pd.concat(firsts, axis=1)
    start = both["metrics"] if "metrics" in both else pd.Series(float("nan"), index=both.index)
    out = start.fillna(both.min(axis=1)).astype(float).rename("start").reset_index()
    out = out.sort_values(["trial_id", "run"], ascending=[True, False]).reset_index(drop=True)
    # a run owns up to the earliest takeover by any newer run (not just the next one: a third run
    # may restore from further back than the second)
    newer = out.groupby("trial_id")["start"].cummin().groupby(out["trial_id"]).shift(1)
    out["until"] = newer.fillna(float("inf"))
    return out.sort_values(["trial_id", "run"]).reset_index(drop=True)


def live_rows(table: str, df: pd.DataFrame, owners: pd.DataFrame | None = None) -> pd.DataFrame:
    """Drop exact repeats and rows of iterations their run does not own. `owners` is
    `takeovers(...)` of all the sweep's tables; without it, this table alone decides."""
    keys = list(KEYS[table])
    df = df.drop_duplicates(subset=[*keys, "run"], keep="last")
    if table == "trials":
        df = df.sort_values(["written_at", "run"]).drop_duplicates(subset=keys, keep="last")
        return df.sort_values("trial_id").reset_index(drop=True)
    if owners is None:
        owners = takeovers({table: df})
    ids = df["trial_id"]
    if isinstance(ids.dtype, pd.CategoricalDtype):      # match the owners to it, not each row
        owners = owners[owners.trial_id.isin(ids.cat.categories)].astype({"trial_id": ids.dtype})
    else:
        ids = ids.astype(str)
    owned = pd.DataFrame({"trial_id": ids, "run": df["run"]}).merge(
        owners, on=["trial_id", "run"], how="left")
    it = result_iteration(table, df).to_numpy()
    # a run unknown to `owners` (rows written after they were computed) keeps its rows
    keep = owned["start"].isna().to_numpy() | ((owned["start"].to_numpy() <= it)
                                               & (it < owned["until"].to_numpy()))
    return df[keep].sort_values([*keys, "run"]).reset_index(drop=True)


def read_spec(sweep_uri: str) -> dict:
    """The spec.yaml of a sweep dir as a mapping; a clear error when the path is not a sweep."""
    fs, path = resolve(sweep_uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise StorageError(f"sweep dir {sweep_uri} does not exist: give the path printed by "
                           "`lifelab sweep` (<storage>/<name>)")
    try:
        with fs.open_input_file(join(path, SPEC_FILE)) as f:
            data = load_yaml(f.read().decode())
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError):
        data = None
    if not isinstance(data, dict):
        raise StorageError(f"{sweep_uri} is not a lifelab sweep (no readable {SPEC_FILE}): give "
                           "the path printed by `lifelab sweep` (<storage>/<name>)")
    return data


def _check_table(table: str) -> None:
    if table not in SCHEMAS:
        raise StorageError(f"unknown results table '{table}': use one of {', '.join(SCHEMAS)}")
