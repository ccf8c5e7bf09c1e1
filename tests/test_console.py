"""A default `lifelab sweep` prints lifelab's lines only (what it starts, progress tables, where
results are), and at its end nothing of its embedded Ray is left: no process, no temp dir."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lifelab.platform import watchdog
from lifelab.platform.cluster import TEMP_PREFIX

pytestmark = pytest.mark.ray

SPEC = {
    "name": "quiet",
    "learner": "finetune",
    "stream": {"tasks": 2, "steps_per_task": 20},
    "config": {"lr": {"loguniform": [1e-4, 1e-2]}, "hidden": [8], "steps_per_round": 10},
    "search": {"scheduler": "pbt", "samples": 2, "perturbation_interval": 1,
               "quantile_fraction": 0.5, "mutations": {"lr": {"loguniform": [1e-4, 1e-2]}}},
    "stop": {"rounds": 4},
}
TRIAL = r"[0-9a-f]{5}_\d{5}"


def lifelab_lines(sweep: Path) -> list[re.Pattern]:
    """Every line lifelab itself prints in a sweep like this one."""
    where = re.escape(str(sweep))
    return [re.compile(p) for p in (
        r"",
        rf"tensorboard --logdir {where}/tensorboard",
        # the progress table: its title, column names and one row per trial
        r"quiet: (no trial yet|\d+ trials \(.*\), val_acc_avg \(max\).* at \d\d:\d\d:\d\d)",
        r"\s*trial\s+status\s+round\s+val_acc_avg.*",
        rf"\s*{TRIAL}\s+(PENDING|RUNNING|PAUSED|TERMINATED)\s+\d+\s.*",
        r"\d+ checkpoints on storage \(\d+\.\d MB\); driver memory peak \d+ MB",
        r"rounds \d+/\d+ \(\d+%\)(, about \d+ (s|min) left)?",
        r"sweep finished: 2 trials, 0 errored",
        rf"results: {where}/results  \(tables: .*\)",
        r"read them with pandas:",
        rf"  python -c \"import pandas as pd; print\(pd.read_parquet\('{where}/results/"
        r"metrics'\)\)\"",
        rf"summary: lifelab report {where}",
    )]


def test_a_default_sweep_prints_only_lifelabs_lines_and_leaves_nothing(tmp_path):
    spec_file = tmp_path / "quiet.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "lifelab", "sweep", str(spec_file),
                                   "--storage", str(tmp_path / "sweeps"), "--progress", "1"],
                                  stdout=out, stderr=err, env=env, start_new_session=True)
        temp_dir, deadline = None, time.monotonic() + 600
        while driver.poll() is None:         # note the Ray temp dir this driver owns
            assert time.monotonic() < deadline, "the sweep did not finish"
            temp_dir = temp_dir or next((d for d in Path("/").glob(TEMP_PREFIX[1:] + "*")
                                         if (watchdog.read_owner(str(d)) or {}).get("driver")
                                         == driver.pid), None)
            time.sleep(0.2)
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert driver.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert stderr == "", stderr
    known = lifelab_lines(tmp_path / "sweeps" / "quiet")
    strays = [line for line in stdout.splitlines()
              if not any(p.fullmatch(line) for p in known)]
    assert not strays, strays
    assert stdout.splitlines()[0] == f"tensorboard --logdir {tmp_path}/sweeps/quiet/tensorboard"
    assert stdout.count("TERMINATED") >= 2
    # the embedded Ray stopped with the command: its processes and temp dir are gone
    assert temp_dir is not None, "the driver recorded no Ray temp dir"
    assert not temp_dir.exists()
    assert not watchdog.session_processes(str(temp_dir))
