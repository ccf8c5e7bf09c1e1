"""`python -m lifelab ...`, except that one worker process is SIGKILLed at the moment Tune hands it,
idle in its actor cache (reuse_actors), to a PAUSED trial that PBT starts again, once
LIFELAB_TEST_KILL_AFTER results were recorded. The actor's death and the failure of the reset
task sent to it both reach Tune: two reports of one death, for a trial that is not RUNNING. The
trial's id and the killed pid are written to LIFELAB_TEST_KILL_MARKER.
tests/test_resume_kills.py checks that the trial is retried from its checkpoint, not ended.
"""

import os
import signal
import sys
import time
from pathlib import Path

import ray
from killpoints import results_recorded
from ray.tune.execution.tune_controller import TuneController

from lifelab import cli

kill_after = int(os.environ["LIFELAB_TEST_KILL_AFTER"])
marker = Path(os.environ["LIFELAB_TEST_KILL_MARKER"])
schedule_reset = TuneController._schedule_trial_reset


def kill_then_reset(self, trial, config, tag):
    sweep = Path(self._storage.experiment_fs_path).parent
    if not marker.exists() and results_recorded(sweep) >= kill_after:
        tracked = self._trial_to_actor[trial]
        handle = self._actor_manager._live_actors_to_ray_actors_resources[tracked][0]
        _, pid = ray.get(handle.get_current_ip_pid.remote())      # it is idle: answers at once
        os.kill(pid, signal.SIGKILL)
        while Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X"):
            time.sleep(0.01)                  # dead before the reset is sent to it
        marker.write_text(f"{trial.trial_id} {pid}")
    return schedule_reset(self, trial, config, tag)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


TuneController._schedule_trial_reset = kill_then_reset
sys.exit(cli.main(sys.argv[1:]))
