"""Nothing of an embedded Ray outlives the lifelab process that started it.

Ray's head processes die with a SIGKILLed driver, but the agents and workers the raylet started
do not, and the session's temp dir stays in /tmp. So `connect` starts this file as a small
process of its own (`python watchdog.py DRIVER_PID DRIVER_START TEMP_DIR`, stdlib only, in its
own session so that Ctrl-C and a killed process group spare it). It polls the driver and, once
the driver is gone, stops the session's processes and removes the temp dir.

A session's processes: those whose command line names its temp dir (gcs_server, raylet, the
monitors), and their descendants (agents and workers rename themselves `ray::...`, so only
ancestry tells). The watchdog keeps a snapshot of them while the driver lives, because once the
raylet is gone its orphans are reparented and no longer look like anyone's.

Linux only (/proc); elsewhere it finds nothing and only removes the temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time

PID_FILE = "lifelab-driver.json"     # in the temp dir: who owns the session
POLL_S = 0.5
TERM_GRACE_S = 3.0                   # then SIGKILL: the agents may ignore SIGTERM


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), which tells a pid's reuse apart;
    None if there is no such live process (a zombie is dead: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    """Whether process `pid`, started at `started`, still runs (without a start time to
    compare, e.g. no /proc: whether any process has that pid)."""
    if not pid:
        return False
    if started is None or not os.path.isdir("/proc"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True                # (someone else's)
        return True
    return start_time(pid) == started


def _processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process we can read."""
    out = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                out[int(entry)] = (parent, f.read())
        except (OSError, IndexError, ValueError):
            continue
    return out


def names(cmdline: bytes, temp_dir: str) -> bool:
    """Whether a NUL-separated command line names `temp_dir` or a path inside it."""
    mark = os.path.abspath(temp_dir).encode()
    paths = [part for arg in cmdline.split(b"\0") for part in (arg, arg.partition(b"=")[2])]
    return any(path == mark or path.startswith(mark + b"/") for path in paths)


def session_processes(temp_dir: str, exclude: set[int] = frozenset()) -> dict[int, int]:
    """pid -> start time of the live processes of the Ray session in `temp_dir`."""
    procs = _processes()
    found = {pid for pid, (_, cmdline) in procs.items() if names(cmdline, temp_dir)}
    found -= set(exclude)
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in procs.items():
        children.setdefault(parent, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child not in exclude:
                found.add(child)
                todo.append(child)
    started = {pid: start_time(pid) for pid in found}
    return {pid: s for pid, s in started.items() if s is not None}


def stop_session(temp_dir: str, known: dict[int, int] | None = None,
                 exclude: set[int] = frozenset(), timeout_s: float = 30.0) -> int:
    """SIGTERM, then SIGKILL, every process of the session (and those in `known` still alive),
    until none is left; then remove the temp dir. Returns how many processes were stopped."""
    exclude = {os.getpid(), *exclude}
    targets = {p: s for p, s in (known or {}).items() if p not in exclude}
    deadline = time.monotonic() + timeout_s
    stopped: set[int] = set()
    termed: dict[int, float] = {}
    while time.monotonic() < deadline:
        targets.update(session_processes(temp_dir, exclude))
        targets = {p: s for p, s in targets.items() if alive(p, s)}
        if not targets:
            break
        for pid in targets:
            first = termed.setdefault(pid, time.monotonic())
            sig = signal.SIGTERM if time.monotonic() - first < TERM_GRACE_S else signal.SIGKILL
            try:
                os.kill(pid, sig)
                stopped.add(pid)
            except OSError:
                pass
        time.sleep(0.2)
    remove_dir(temp_dir)
    return len(stopped)


def remove_dir(path: str) -> None:
    """Remove a temp dir that dying processes may still write logs into."""
    for _ in range(5):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.2)


def write_owner(temp_dir: str, driver: int, watchdog: int | None) -> None:
    """Record who owns the session, so a later lifelab can tell an abandoned one."""
    owner = {"driver": driver, "driver_start": start_time(driver),
             "watchdog": watchdog, "watchdog_start": start_time(watchdog) if watchdog else None}
    path = os.path.join(temp_dir, PID_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(owner, f)
    os.replace(path + ".tmp", path)


def read_owner(temp_dir: str) -> dict | None:
    try:
        with open(os.path.join(temp_dir, PID_FILE)) as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None


def watch(driver: int, driver_start: int | None, temp_dir: str) -> None:
    known: dict[int, int] = {}
    polls = 0
    while alive(driver, driver_start) and os.path.isdir(temp_dir):
        if polls % 2 == 0:          # every second: new workers start, and they are cheap to list
            known = {p: s for p, s in known.items() if alive(p, s)}
            known.update(session_processes(temp_dir))
        polls += 1
        time.sleep(POLL_S)
    if os.path.isdir(temp_dir):     # (a driver that stopped its Ray itself removed the dir)
        stop_session(temp_dir, known)


if __name__ == "__main__":
    # Ctrl-C in the terminal and a hangup must not stop the cleanup of what they interrupted
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch(int(sys.argv[1]), None if sys.argv[2] == "-" else int(sys.argv[2]), sys.argv[3])
