"""One driver per sweep: the lease file, its heartbeat, stale leases, and the CLI's refusals."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from lifelab.cli import main
from lifelab.searches.lease import LEASE_FILE, Lease, SweepBusyError


def write_lease(where, **fields):
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "sweep": str(where),
              "heartbeat": time.time(), "token": "someone", "pid_start": "", **fields}
    where.mkdir(parents=True, exist_ok=True)
    (where / LEASE_FILE).write_text(json.dumps(holder))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_lease_names_its_driver_and_is_gone_after_release(tmp_path):
    lease = Lease(str(tmp_path / "sw"))
    assert lease.acquire() is None
    held = json.loads((tmp_path / "sw" / LEASE_FILE).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(SweepBusyError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        Lease(str(tmp_path / "sw")).acquire()
    lease.release()
    assert not (tmp_path / "sw" / LEASE_FILE).exists()
    assert os.listdir(tmp_path / "sw") == []            # no temporary file left behind


def test_the_heartbeat_renews_the_lease(tmp_path):
    lease = Lease(str(tmp_path / "sw"), heartbeat_s=0.05)
    lease.acquire()
    first = lease.holder().heartbeat
    wait_for(lambda: lease.holder().heartbeat > first)
    lease.release()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    write_lease(tmp_path / "sw", pid=dead_pid())
    lease = Lease(str(tmp_path / "sw"))
    note = lease.acquire()
    assert "took over" in note and "its process is gone" in note and "\n" not in note
    assert lease.holder().token == lease.token
    lease.release()


def test_a_reused_pid_does_not_keep_a_lease_alive(tmp_path):
    write_lease(tmp_path / "sw", pid=os.getpid(), pid_start="1")   # another process's start
    assert "its process is gone" in Lease(str(tmp_path / "sw")).acquire()


def test_another_hosts_lease_lives_while_its_heartbeat_is_recent(tmp_path):
    write_lease(tmp_path / "sw", host="elsewhere", pid=1, heartbeat=time.time() - 5)
    with pytest.raises(SweepBusyError, match="pid 1 on elsewhere"):
        Lease(str(tmp_path / "sw"), stale_s=60).acquire()
    write_lease(tmp_path / "sw", host="elsewhere", pid=1, heartbeat=time.time() - 120)
    note = Lease(str(tmp_path / "sw"), stale_s=60).acquire()
    assert "heartbeat is 120 s old" in note


def test_a_lease_copied_with_the_sweep_dir_binds_no_one(tmp_path):
    write_lease(tmp_path / "copy", sweep=str(tmp_path / "original"))   # this process: alive
    note = Lease(str(tmp_path / "copy")).acquire()
    assert f"it was taken for {tmp_path / 'original'}" in note


def test_a_driver_that_was_taken_over_notices_and_leaves_the_new_lease_alone(tmp_path):
    lease = Lease(str(tmp_path / "sw"), heartbeat_s=0.05)
    lease.acquire()
    write_lease(tmp_path / "sw", host="elsewhere", pid=7)
    wait_for(lambda: lease.lost is not None)
    assert lease.lost.host == "elsewhere"
    lease.release()
    assert json.loads((tmp_path / "sw" / LEASE_FILE).read_text())["host"] == "elsewhere"


def test_of_many_drivers_racing_for_a_stale_lease_exactly_one_wins(tmp_path):
    write_lease(tmp_path / "sw", pid=dead_pid())
    leases = [Lease(str(tmp_path / "sw")) for _ in range(8)]
    start, won, lost = threading.Barrier(len(leases)), [], []

    def race(lease):
        start.wait()
        try:
            lease.acquire()
            won.append(lease)
        except SweepBusyError:
            lost.append(lease)

    threads = [threading.Thread(target=race, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == 7
    assert Lease(str(tmp_path / "sw")).holder().token == won[0].token
    won[0].release()


def test_on_an_object_store_the_last_writer_wins_and_the_others_back_off(s3):
    uri = "s3://lifelab-test/leased"
    first = Lease(uri, settle_s=0.2)
    first.acquire()
    with pytest.raises(SweepBusyError, match=f"pid {os.getpid()}"):
        Lease(uri, settle_s=0.2).acquire()
    first.release()
    second = Lease(uri, settle_s=0.2)
    assert second.acquire() is None
    second.release()
    assert second.holder() is None


def sweep_dir(tmp_path):
    sweep = tmp_path / "sweeps" / "busy"
    sweep.mkdir(parents=True)
    (sweep / "spec.yaml").write_text(yaml.safe_dump({"name": "busy", "learner": "finetune"}))
    return sweep


def test_resume_and_sweep_of_a_sweep_a_live_driver_runs_are_refused_in_one_line(tmp_path,
                                                                                capsys):
    sweep = sweep_dir(tmp_path)
    lease = Lease(str(sweep))
    lease.acquire()
    try:
        assert main(["resume", str(sweep)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"pid {os.getpid()} on {socket.gethostname()}" in err
        assert main(["sweep", "demo", "--name", "busy", "--storage", str(sweep.parent)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "is being run by the driver pid" in err
    finally:
        lease.release()
    # without a live driver, `sweep` of an existing name still points at resume
    assert main(["sweep", "demo", "--name", "busy", "--storage", str(sweep.parent)]) == 2
    assert "already exists" in capsys.readouterr().err
