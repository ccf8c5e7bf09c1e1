"""Kill the driver of a running sweep with SIGKILL, `lifelab resume` it, and check the store."""

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scripts.killpoints import state_refers_to_checkpoints

from lifelab.analysis.status import status_text

ROUNDS = 45
SPEC = {
    "name": "killme",
    "learner": "finetune",
    "stream": {"tasks": 3, "steps_per_task": 150},
    "config": {"lr": {"loguniform": [1e-4, 1e-2]}, "hidden": [64], "steps_per_round": 10},
    "search": {"scheduler": "pbt", "metric": "val_acc_avg", "samples": 2,
               "perturbation_interval": 8,
               "quantile_fraction": 0.5, "mutations": {"lr": {"loguniform": [1e-4, 1e-2]}}},
    "stop": {"rounds": ROUNDS},
}


HANG_IN_FLUSH = Path(__file__).parent / "scripts" / "hang_in_flush.py"
HANG_AFTER_DELETION = Path(__file__).parent / "scripts" / "hang_after_deletion.py"


def lifelab(*args, program=("-m", "lifelab"), env=None):
    # results reach the store as Tune saves its state: often here, so the kill points fall
    # while the sweep runs
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "LIFELAB_STATE_PERIOD_S": "0.25",
           **(env or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, *program, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def exploited(sweep: Path) -> bool:
    """A PBT exploit has happened and been recorded, and Tune's state has caught up."""
    return (any((sweep / "results" / "events").glob("part-*.parquet"))
            and state_refers_to_checkpoints(sweep))


def flushing(sweep: Path) -> bool:
    """The driver hangs inside a metrics part write (tests/scripts/hang_in_flush.py)."""
    return (sweep.parent / "flushing").exists()


def deleted(sweep: Path) -> bool:
    """The driver hangs right after retention deleted a checkpoint
    (tests/scripts/hang_after_deletion.py)."""
    return (sweep.parent / "deleted").exists()


@pytest.mark.parametrize("kill_when", [state_refers_to_checkpoints, exploited, flushing, deleted],
                         ids=["after-checkpoints", "after-an-exploit", "while-the-store-flushes",
                              "right-after-a-retention-deletion"])
def test_sigkilled_sweep_resumes_from_checkpoints_with_one_row_per_key(short_tmp, kill_when):
    spec_file = Path(short_tmp) / "killme.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    sweep = Path(short_tmp) / "sweeps" / "killme"
    if kill_when is flushing:   # a metrics write from the 3rd on, once Tune's state is saved
        driver = lifelab("sweep", str(spec_file), "--storage", str(sweep.parent),
                         program=(str(HANG_IN_FLUSH),),
                         env={"LIFELAB_TEST_FLUSH_AT": "3",
                              "LIFELAB_TEST_FLUSH_MARKER": str(sweep.parent / "flushing")})
    elif kill_when is deleted:
        driver = lifelab("sweep", str(spec_file), "--storage", str(sweep.parent),
                         program=(str(HANG_AFTER_DELETION),),
                         env={"LIFELAB_TEST_DELETE_AT": "4",
                              "LIFELAB_TEST_DELETE_MARKER": str(sweep.parent / "deleted")})
    else:
        driver = lifelab("sweep", str(spec_file), "--storage", str(sweep.parent))
    deadline = time.monotonic() + 180
    while not kill_when(sweep):
        assert driver.poll() is None, driver.stdout.read()
        assert time.monotonic() < deadline, "sweep made no progress"
        time.sleep(0.2)
    running = status_text(str(sweep))            # readable while the sweep runs
    assert "2 trials (2 running)" in running and "RUNNING" in running
    os.killpg(driver.pid, signal.SIGKILL)   # the driver and the Ray it started, like a crash
    driver.wait()
    before = pd.concat(pd.read_parquet(p) for p in (sweep / "results/metrics").glob("part-*"))
    assert before.iteration.max() < ROUNDS, "sweep finished before it was killed"
    if kill_when is flushing:
        assert list((sweep / "results").glob("metrics/.tmp-*")), "killed mid-write"

    resumed = lifelab("resume", str(sweep))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "sweep finished: 2 trials, 0 errored" in out

    metrics = pd.read_parquet(sweep / "results" / "metrics")
    assert not list((sweep / "results").glob("*/.tmp-*")), "the end of the sweep removes them"
    assert not metrics.duplicated(["trial_id", "iteration", "name"]).any()
    acc = metrics[metrics.name == "acc_avg"]
    # No gaps, except where a PBT exploit made a trial continue from a donor checkpoint that was
    # ahead of it (trials drift apart under load): the event names the iteration it jumped to.
    events = (pd.read_parquet(sweep / "results" / "events")     # none if PBT never exploited
              if (sweep / "results" / "events").exists() else pd.DataFrame(
                  columns=["trial_id", "iteration"]))
    jumps = set(zip(events.trial_id, events.iteration + 1, strict=True))
    for trial_id, rows in acc.groupby("trial_id"):
        iterations = sorted(rows.iteration)
        assert iterations[0] == 1 and iterations[-1] == ROUNDS, trial_id
        for previous, following in itertools.pairwise(iterations):
            assert following == previous + 1 or (trial_id, following) in jumps, \
                (trial_id, previous, following)
    # the resumed run continued from checkpoints, not from scratch
    first_run, second_run = sorted(metrics.run.unique())
    assert metrics[metrics.run == second_run].iteration.min() > 1
    assert (metrics[metrics.run == first_run].iteration <= before.iteration.max()).all()
    trials = pd.read_parquet(sweep / "results" / "trials")
    assert len(trials) == 2 and set(trials.status) == {"TERMINATED"}
    assert (trials.iterations == ROUNDS).all()
    accuracy = pd.read_parquet(sweep / "results" / "accuracy")
    assert not accuracy.duplicated(["trial_id", "iteration", "trained_task", "eval_task",
                                    "split"]).any()
    for (trial_id, split), rows in accuracy.groupby(["trial_id", "split"]):
        # each matrix row once per split, the last whole
        assert not rows.duplicated(["trained_task", "eval_task"]).any(), (trial_id, split)
        assert sorted(rows[rows.trained_task == 2].eval_task) == [0, 1, 2], (trial_id, split)
