"""Randomized kill tests: drivers SIGKILLed at a seeded schedule of moments, counted in results
the store recorded (never in seconds): during a sweep, during its resume, before Tune saved any
state; killed sweeps moved and copied before they are resumed; a worker killed. After every sweep
finishes: one row per key, tables that agree on which run owns each iteration, every trial at its
last round and TERMINATED, no `.tmp-*` file, no lease, no process of any killed driver left.

LIFELAB_KILL_SEED picks another schedule (default 0); the moments are printed on failure.
"""

import hashlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scripts.killpoints import latest_run, results_recorded

from lifelab.platform.store import KEYS

SEED = int(os.environ.get("LIFELAB_KILL_SEED", "0"))
WAIT_S = 300.0                   # any one wait; generous, for a loaded machine
KILL_WORKER = Path(__file__).parent / "scripts" / "kill_worker_on_reuse.py"
TABLES = ("trials", "metrics", "accuracy", "events")


def spec(name, rounds, **search):
    steps = 5 * rounds // 2                 # two tasks of rounds/2 rounds: a new task mid-way
    return {"name": name, "learner": search.pop("learner", "finetune"),
            "stream": {"tasks": 2, "steps_per_task": steps},
            "config": {"lr": {"loguniform": [1e-4, 1e-2]}, "hidden": [8], "batch_size": 32,
                       "steps_per_round": 5},
            "search": {"scheduler": "pbt", "metric": "val_acc_avg", "quantile_fraction": 0.5,
                       "mutations": {"lr": {"loguniform": [1e-4, 1e-2]}}, **search},
            "stop": {"rounds": rounds}}


# like the demo preset: two learners, each its own PBT population
DEMO_LIKE = spec("demo-like", 4, learner={"grid": ["finetune", "joint"]}, samples=2,
                 perturbation_interval=1, group_by="learner")
# more trials than CPUs, and every round a sync point where half the population exploits
FREQUENT = spec("frequent", 4, samples=3, perturbation_interval=1, synch=True)


class Drivers:
    """`lifelab` drivers of one test, each in its own session; none outlives the test."""

    def __init__(self, root: Path):
        self.root, self.started = root, []

    def start(self, *args, program=("-m", "lifelab"), env=None) -> subprocess.Popen:
        log = self.root / f"driver-{len(self.started)}.log"
        # results reach the store as Tune saves its state: often here, so kill points based on
        # results counted in the store fall while the driver runs
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
               "LIFELAB_STATE_PERIOD_S": "0.25", **(env or {})}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen([sys.executable, *program, *args, "--progress", "0"]
                                if args[0] == "sweep" else [sys.executable, *program, *args],
                                env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.log = log
        self.started.append(proc)
        return proc

    def wait_for(self, proc, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            assert proc.poll() is None, f"driver ended before {what}: {tail(proc)}"
            assert time.monotonic() < deadline, f"no {what} in {WAIT_S} s: {tail(proc)}"
            time.sleep(0.1)

    def kill(self, proc) -> None:
        """Like a crash: the driver and the Ray it started, at once."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.gone(proc)

    def finish(self, proc) -> str:
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"driver still running after {WAIT_S} s: {tail(proc)}")
        self.gone(proc)
        return proc.log.read_text()

    def gone(self, proc) -> None:
        """Every process of the driver's session ends (Ray's workers exit when their raylet
        is gone); any left is killed and fails the test."""
        deadline = time.monotonic() + 60
        while (left := session(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            with_suppressed(os.kill, pid, signal.SIGKILL)
        assert not left, f"processes left behind by driver {proc.pid}: {left}"

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with_suppressed(os.killpg, proc.pid, signal.SIGKILL)
                proc.wait()
            for pid in session(proc.pid):
                with_suppressed(os.kill, pid, signal.SIGKILL)


def with_suppressed(call, *args):
    try:
        call(*args)
    except OSError:
        pass


def session(sid: int) -> list[int]:
    """Live processes of a session (zombies are dead)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] not in "ZX":
                pids.append(int(entry))
    return pids


def tail(proc) -> str:
    return proc.log.read_text()[-3000:]


@pytest.fixture
def drivers(short_tmp):
    pool = Drivers(Path(short_tmp))
    yield pool
    pool.cleanup()


def tune_state(sweep: Path) -> bool:
    return any((sweep / "tune").glob("experiment_state-*.json"))


def write_spec(root: Path, data: dict) -> str:
    path = root / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_finished(sweep: Path, data: dict, out: str) -> pd.DataFrame:
    """The store of a finished sweep, after any number of kills and resumes."""
    trials_n = data["search"]["samples"] * (2 if isinstance(data["learner"], dict) else 1)
    rounds = data["stop"]["rounds"]
    assert f"sweep finished: {trials_n} trials, 0 errored" in out, out[-3000:]
    results = sweep / "results"
    assert not list(sweep.rglob(".tmp-*")), "a temporary part was left"
    assert not (sweep / "lease.json").exists() and not list(sweep.glob(".lease-*"))
    tables = {}
    for table in TABLES:
        parts = list((results / table).glob("part-*.parquet"))
        assert len(parts) <= 1, f"{table} not compacted"
        tables[table] = pd.read_parquet(parts[0]) if parts else pd.DataFrame(
            columns=[*KEYS[table], "run"])
        assert not tables[table].duplicated(list(KEYS[table])).any(), f"{table}: a key twice"
    trials, metrics = tables["trials"], tables["metrics"]
    assert len(trials) == trials_n and set(trials.status) == {"TERMINATED"}, trials
    assert (trials.iterations == rounds).all(), trials
    owner = {(t, i): r for t, i, r in zip(metrics.trial_id, metrics.iteration, metrics.run,
                                          strict=True)}
    for table, shift in (("accuracy", 0), ("events", 1)):     # an event: of the next result
        df = tables[table]
        for t, i, r in zip(df.trial_id, df.iteration + shift, df.run, strict=True):
            assert owner.get((t, i)) == r, f"{table} row of {t} at {i} (run {r}) without " \
                                           f"its run's metrics ({owner.get((t, i))})"
    events = tables["events"]
    jumps = set(zip(events.trial_id, events.iteration + 1, strict=True))
    for trial_id, rows in metrics[metrics.name == "val_acc_avg"].groupby("trial_id"):
        its = sorted(rows.iteration)
        assert its[0] == 1 and its[-1] == rounds, (trial_id, its)
        for a, b in itertools.pairwise(its):
            assert b == a + 1 or (trial_id, b) in jumps, (trial_id, a, b)
    return trials


def test_a_demo_like_sweep_killed_moved_killed_again_and_copied_finishes_whole(short_tmp,
                                                                               drivers):
    rng = random.Random(f"{SEED}-demo")
    total = 2 * DEMO_LIKE["search"]["samples"] * DEMO_LIKE["stop"]["rounds"]
    first, second = rng.randint(2, total // 2), rng.randint(1, total // 4)
    print(f"kill points: {first} results, then {second} more into the resume")
    root = Path(short_tmp)
    src, dst, copy = root / "a" / "src", root / "b" / "dst", root / "c" / "copy"
    driver = drivers.start("sweep", write_spec(root, DEMO_LIKE), "--name", "src",
                           "--storage", str(src.parent))
    drivers.wait_for(driver, lambda: results_recorded(src) >= first, f"{first} results")
    drivers.kill(driver)

    dst.parent.mkdir()
    shutil.move(src, dst)
    resumed = drivers.start("resume", str(dst))
    base = latest_run(dst)
    drivers.wait_for(resumed, lambda: results_recorded(dst, newer_than=base) >= second,
                     "progress of the resume")
    drivers.kill(resumed)
    assert "took over the lease" in resumed.log.read_text()
    assert not src.exists(), "the resume of the moved sweep wrote to where it started"

    before = digest(dst)
    shutil.copytree(dst, copy, symlinks=True)
    out = drivers.finish(drivers.start("resume", str(copy)))
    check_finished(copy, {**DEMO_LIKE, "name": "copy"}, out)
    assert digest(dst) == before, "the resume of the copy touched the original"
    assert not src.exists()


def test_pbt_with_frequent_exploits_resumes_from_nothing_a_lost_worker_and_a_killed_resume(
        short_tmp, drivers):
    rng = random.Random(f"{SEED}-frequent")
    total = FREQUENT["search"]["samples"] * FREQUENT["stop"]["rounds"]
    worker_at = rng.randint(2, total // 2)
    second = rng.randint(worker_at + 1, total - 3)
    print(f"kill points: before Tune's state, a worker at {worker_at} results, the resume at "
          f"{second}")
    root = Path(short_tmp)
    sweep = root / "sweeps" / "frequent"
    driver = drivers.start("sweep", write_spec(root, FREQUENT), "--storage", str(sweep.parent))
    drivers.wait_for(driver, lambda: (sweep / "spec.yaml").exists(), "spec.yaml")
    drivers.kill(driver)                                # before Tune saved any state (mostly)
    from_nothing = not tune_state(sweep)

    marker = root / "worker-killed"
    resumed = drivers.start("resume", str(sweep), program=(str(KILL_WORKER),),
                            env={"LIFELAB_TEST_KILL_AFTER": str(worker_at),
                                 "LIFELAB_TEST_KILL_MARKER": str(marker)})
    drivers.wait_for(resumed, lambda: retried(sweep, marker) and results_recorded(sweep) >= second
                     and tune_state(sweep), "a killed worker's trial started again, and progress")
    drivers.kill(resumed)
    out = resumed.log.read_text()
    assert ("stopped before Tune saved any state" in out) == from_nothing, out[-3000:]

    # a synchronous population restored in step: Tune's PBT would wait forever here
    out = drivers.finish(drivers.start("resume", str(sweep)))
    trials = check_finished(sweep, FREQUENT, out)
    killed_trial = marker.read_text().split()[0]
    assert trials.set_index("trial_id").status[killed_trial] == "TERMINATED"


def retried(sweep: Path, marker: Path) -> bool:
    """The trial whose worker was killed started again (and was never ended in ERROR)."""
    if not marker.exists():
        return False
    rows = pd.read_parquet(sweep / "results" / "trials")
    rows = rows[rows.trial_id == marker.read_text().split()[0]]
    assert not (rows.status == "ERROR").any(), "the trial of the killed worker ended in ERROR"
    return bool(((rows.status == "RUNNING") & (rows.written_at > marker.stat().st_mtime)).any())
