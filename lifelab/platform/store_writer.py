"""The driver's side of the results store: rows are buffered, written a few part files at a time,
and small parts are merged into bigger ones as the sweep runs.

A part file per result would make a 1,000-trial sweep write 100,000+ files (on S3, one PUT
each). Instead the recording callback hands every result's rows to `add`, and `flush` writes
each table's buffer as one part. Whoever decides durability calls `flush`: the recording
callback does so every time Tune saves the experiment state that a resume starts from, so every
row older than a checkpoint a resume can use is on storage before that checkpoint counts (the
rows after it are re-reported by the resumed trial).

After each flush, a table with more than `max_parts` parts has its newest parts merged into one,
taking older parts along while they are no bigger than twice what is being merged: part sizes
stay roughly geometric, so each row is rewritten O(log rows) times and a table stays a handful
of files. A merge writes the merged part before deleting its sources; a crash between the two
leaves exact copies, which readers drop (same key, same run). A part that cannot be read is
never merged nor deleted.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from lifelab.platform.store import SCHEMAS, ResultStore

MAX_PARTS = 8                 # per table, after a flush
MAX_BUFFERED_ROWS = 200_000   # a flush is forced beyond this, to bound the driver's memory


class StoreWriter:
    def __init__(self, store: ResultStore, max_parts: int = MAX_PARTS,
                 max_buffered_rows: int = MAX_BUFFERED_ROWS):
        self.store = store
        self.max_parts = max(2, max_parts)
        self.max_buffered_rows = max_buffered_rows
        self.buffers: dict[str, list[dict]] = {table: [] for table in SCHEMAS}
        self.rows_in: dict[str, int] = {}          # part path -> rows, for parts seen so far
        self.files_written = 0                     # parts written, merged ones included

    @property
    def buffered(self) -> int:
        return sum(map(len, self.buffers.values()))

    def add(self, table: str, rows: Iterable[dict]) -> None:
        """Buffer rows for `table` (`run` filled in as the store's); flushes when the buffer is
        full."""
        run = self.store.run
        self.buffers[table].extend({"run": run, **row} for row in rows)
        if self.buffered >= self.max_buffered_rows:
            self.flush()

    def flush(self) -> None:
        """Write every buffered row (one part per table that has rows), then merge."""
        for table, rows in self.buffers.items():
            if not rows:
                continue
            path = self.store.write_part(table, pa.Table.from_pylist(rows, schema=SCHEMAS[table]))
            self.rows_in[path] = len(rows)
            self.files_written += 1
            self.buffers[table] = []
            self.merge(table)

    def merge(self, table: str) -> None:
        """Merge the newest parts of `table` into one when it has more than `max_parts`."""
        parts = self.store.parts(table)
        if len(parts) <= self.max_parts:
            return
        sizes = [self._rows(part) for part in parts]
        start = self.max_parts // 2 - 1           # leaves max_parts // 2 parts after the merge
        while start > 0 and sizes[start - 1] <= 2 * sum(sizes[start:]):
            start -= 1
        sources, unreadable = parts[start:], []
        arrow = self.store.scan(table, sources, unreadable=unreadable)
        sources = [p for p in sources if p not in unreadable]
        if len(sources) < 2 or arrow is None:
            return
        merged = self.store.write_part(table, arrow)
        self.rows_in[merged] = arrow.num_rows
        self.files_written += 1
        for part in sources:
            self.store.delete_part(part)
            self.rows_in.pop(part, None)

    def _rows(self, part: str) -> int:
        if part not in self.rows_in:      # a part of an earlier run: its footer says
            try:
                self.rows_in[part] = pq.read_metadata(part, filesystem=self.store.fs).num_rows
            except (OSError, pa.ArrowException):
                self.rows_in[part] = 0    # unreadable: scan() skips it with a warning
        return self.rows_in[part]
