"""Nothing of an embedded Ray outlives a SIGKILLed driver: its watchdog stops the session's
processes and removes its temp dir, and the next lifelab command reaps what a killed driver and
a killed watchdog both left."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from lifelab.platform import watchdog
from lifelab.platform.cluster import TEMP_PREFIX

SPEC = {
    "name": "killed",
    "learner": "finetune",
    "stream": {"tasks": 2, "steps_per_task": 2000},        # far longer than the test waits
    "config": {"hidden": [8], "steps_per_round": 10},
    "stop": {"rounds": 400},
    "loggers": [],
}


def lifelab(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "lifelab", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def left_of(temp_dir: Path, group: int) -> list[int]:
    """Live processes that name the temp dir or are still in the driver's process group."""
    named = set(watchdog.session_processes(str(temp_dir)))
    grouped = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == group and watchdog.start_time(int(entry)):
                    grouped.add(int(entry))
            except OSError:
                pass
    return sorted(named | grouped)


@pytest.mark.ray
def test_a_sigkilled_driver_leaves_no_ray_processes_and_no_temp_dir(tmp_path):
    spec_file = tmp_path / "killed.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    sweep = tmp_path / "sweeps" / "killed"
    # its own process group: every Ray process it starts is in it, whatever it renames itself
    driver = lifelab("sweep", str(spec_file), "--storage", str(sweep.parent), "--progress", "0",
                     start_new_session=True)
    deadline, temp_dir = time.monotonic() + 300, None
    while temp_dir is None or not list((sweep / "results" / "metrics").glob("part-*")):
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, "the sweep reported no result"
        temp_dir = temp_dir or next((d for d in Path("/").glob(TEMP_PREFIX[1:] + "*")
                                     if (watchdog.read_owner(str(d)) or {}).get("driver")
                                     == driver.pid), None)
        time.sleep(0.2)
    # private: Ray's session dir (which Ray keeps world-writable) is inside a dir of mode 0700
    assert next(temp_dir.glob("ray/session_2*")).is_dir()
    assert temp_dir.stat().st_mode & 0o777 == 0o700
    assert left_of(temp_dir, driver.pid), "a running sweep has Ray processes"

    os.kill(driver.pid, signal.SIGKILL)          # the driver alone: its Ray is left running
    driver.communicate()
    deadline = time.monotonic() + 120
    while left := left_of(temp_dir, driver.pid):
        assert time.monotonic() < deadline, f"still running: {left}"
        time.sleep(0.5)
    after = lifelab("status", str(sweep))        # the next command
    after.communicate(timeout=120)
    assert not temp_dir.exists()


def test_the_next_command_reaps_a_session_whose_driver_and_watchdog_were_killed():
    temp_dir = tempfile.mkdtemp(prefix=Path(TEMP_PREFIX).name, dir=Path(TEMP_PREFIX).parent)
    # what a dead session leaves: an agent-like process whose command line names the dir
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                              f"--temp-dir={temp_dir}"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    Path(temp_dir, watchdog.PID_FILE).write_text(json.dumps(   # no such process, nor watchdog
        {"driver": dead.pid, "driver_start": -1, "watchdog": None, "watchdog_start": None}))
    try:
        done = lifelab("status", "/nonexistent-sweep")
        _, err = done.communicate(timeout=120)
        assert stray.wait(timeout=30) is not None
        assert not os.path.exists(temp_dir)
        lines = err.strip().splitlines()
        assert lines[0] == (f"lifelab: stopped the Ray left by 1 killed lifelab run(s) and "
                            f"removed {temp_dir}"), err
    finally:
        stray.kill()
        watchdog.remove_dir(temp_dir)
