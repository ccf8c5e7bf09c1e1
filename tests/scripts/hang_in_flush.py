"""`python -m lifelab ...`, except that the results store hangs in the middle of one part write:
the temporary file of a write to the metrics table is on disk, not yet renamed, when the driver
stops there and touches a marker file. tests/test_resume.py SIGKILLs it at that moment, i.e.
while the store is flushing. The write it hangs in is the Nth or a later one, the first after
Tune's saved state refers to every trial's checkpoints (so the resume has something to continue).

Environment: LIFELAB_TEST_FLUSH_AT (N), LIFELAB_TEST_FLUSH_MARKER (the marker file's path).
"""

import os
import sys
import time
import types
from pathlib import Path

import pyarrow.parquet as pq
from killpoints import state_refers_to_checkpoints

from lifelab import cli
from lifelab.platform import store

hang_at = int(os.environ["LIFELAB_TEST_FLUSH_AT"])
marker = Path(os.environ["LIFELAB_TEST_FLUSH_MARKER"])
metrics_writes = 0


def write_table_then_hang(table, where, **kwargs):
    global metrics_writes
    pq.write_table(table, where, **kwargs)
    if "/metrics/" in str(where):
        metrics_writes += 1
        sweep = Path(str(where)).parents[2]       # <sweep>/results/metrics/.tmp-part-...
        if metrics_writes >= hang_at and state_refers_to_checkpoints(sweep):
            marker.write_text(str(where))
            time.sleep(3600)


# the store's own reference to pyarrow.parquet; every other user of pyarrow is untouched
store.pq = types.SimpleNamespace(**{**vars(pq), "write_table": write_table_then_hang})
sys.exit(cli.main(sys.argv[1:]))
