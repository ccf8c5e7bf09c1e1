"""`python -m lifelab ...`, except that the driver stops right after checkpoint retention deleted
a checkpoint, and touches a marker file: tests/test_resume.py SIGKILLs it at that moment. The
deletion it stops after is the Nth or a later one, once Tune's saved state refers to every
trial's checkpoints (so the resume has something to continue).

Environment: LIFELAB_TEST_DELETE_AT (N), LIFELAB_TEST_DELETE_MARKER (the marker file's path).
"""

import os
import sys
import time
from pathlib import Path

from killpoints import state_refers_to_checkpoints

from lifelab import cli
from lifelab.searches.retention import CheckpointRetention

hang_at = int(os.environ["LIFELAB_TEST_DELETE_AT"])
marker = Path(os.environ["LIFELAB_TEST_DELETE_MARKER"])
deleted = 0
delete = CheckpointRetention._delete


def delete_then_hang(self, fs, path):
    global deleted
    delete(self, fs, path)
    deleted += 1
    sweep = Path(path).parents[2]         # <sweep>/tune/<trial dir>/checkpoint_...
    if deleted >= hang_at and state_refers_to_checkpoints(sweep):
        marker.write_text(path)
        time.sleep(3600)


CheckpointRetention._delete = delete_then_hang
sys.exit(cli.main(sys.argv[1:]))
