"""Sweeps whose storage is object storage: an S3-compatible server (moto) on loopback."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from lifelab.analysis.status import status_text


def test_sweep_on_s3_storage_writes_tune_state_and_parquet_there(s3, short_tmp):
    fs, env = s3
    spec = {"name": "on-s3", "learner": "finetune",
            "stream": {"tasks": 2, "steps_per_task": 20},
            "config": {"lr": {"grid": [1e-3, 3e-3]}, "hidden": [16], "steps_per_round": 10},
            "search": {"scheduler": "fifo"}}
    spec_file = Path(short_tmp) / "on-s3.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    run_env = {**os.environ, **env, "RAY_AUTH_MODE": "disabled"}
    run_env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "lifelab", "sweep", str(spec_file),
                           "--storage", "s3://lifelab-test/sweeps"], env=run_env, text=True,
                          capture_output=True, timeout=300, cwd=short_tmp)   # trackers: ./
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "s3://lifelab-test/sweeps/on-s3/results" in done.stdout

    root = "lifelab-test/sweeps/on-s3"
    metrics = pq.read_table(f"{root}/results/metrics", filesystem=fs).to_pandas()
    acc = metrics[metrics.name == "acc_avg"]
    assert len(acc) == 2 * 4 and not metrics.duplicated(["trial_id", "iteration", "name"]).any()
    assert fs.get_file_info(f"{root}/spec.yaml").type == pafs.FileType.File
    tune_files = fs.get_file_info(pafs.FileSelector(f"{root}/tune", recursive=True))
    assert any("checkpoint_" in f.path for f in tune_files)          # checkpoints live on S3
    assert "2 trials (2 terminated)" in status_text("s3://lifelab-test/sweeps/on-s3")

    again = subprocess.run([sys.executable, "-m", "lifelab", "sweep", str(spec_file),
                            "--storage", "s3://lifelab-test/sweeps"], env=run_env, text=True,
                           capture_output=True, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr
