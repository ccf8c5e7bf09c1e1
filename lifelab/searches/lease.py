"""One driver per sweep: a lease file in the sweep dir names the driver that runs it.

`<sweep>/lease.json` holds the driver's host, pid (and the pid's start time, so a reused pid is
not mistaken for it), the sweep location it was taken for and a heartbeat time that a daemon
thread renews every HEARTBEAT_S. A lease is alive while its heartbeat is recent and, on the same
host, its process exists; a lease copied or moved along with a sweep dir names another location
and binds no one. A stale lease is taken over.

On local disk the lease is created atomically (a hard link that fails if the name exists). Object
stores have no atomic create: the lease is written, then read back after SETTLE_S; the last writer
wins and every other contender sees it and backs off.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs
from ray import tune

from lifelab.errors import LifelabError
from lifelab.platform.store import join, resolve

LEASE_FILE = "lease.json"
HEARTBEAT_S = 10.0
STALE_S = 90.0       # several missed heartbeats, even on a loaded machine
SETTLE_S = 2.0       # object stores: longer than any contender's read-then-write


class SweepBusyError(LifelabError):
    """Another driver holds the sweep's lease."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    sweep: str
    heartbeat: float
    token: str
    pid_start: str = ""

    def age(self) -> float:
        return max(0.0, time.time() - self.heartbeat)

    def gone(self) -> bool:
        """Its process is known to have ended (only knowable on its own host)."""
        if self.host != socket.gethostname():
            return False
        start = _pid_start(self.pid)
        return start is None or bool(self.pid_start and start != self.pid_start)

    def describe(self) -> str:
        return f"the driver pid {self.pid} on {self.host} (heartbeat {self.age():.0f} s ago)"


class Lease:
    """The lease of one sweep location; `acquire`, then `release` (or use as a context)."""

    def __init__(self, sweep_uri: str, stale_s: float = STALE_S,
                 heartbeat_s: float = HEARTBEAT_S, settle_s: float = SETTLE_S):
        self.sweep_uri = sweep_uri
        self.fs, self.dir = resolve(sweep_uri)
        self.path = join(self.dir, LEASE_FILE)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.stale_s, self.heartbeat_s, self.settle_s = stale_s, heartbeat_s, settle_s
        self.token = uuid.uuid4().hex
        self.lost: Holder | None = None          # set when another driver took the lease over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading -------------------------------------------------------------------------------

    def holder(self) -> Holder | None:
        """Who holds the lease now (None: no lease, or an unreadable one)."""
        try:
            with self.fs.open_input_stream(self.path) as f:
                return Holder(**json.loads(f.read().decode()))
        except (OSError, ValueError, TypeError):
            return None

    def alive(self, holder: Holder | None) -> bool:
        return (holder is not None and holder.sweep == self.dir
                and holder.age() < self.stale_s and not holder.gone())

    def busy_error(self, holder: Holder) -> SweepBusyError:
        return SweepBusyError(f"sweep {self.sweep_uri} is being run by {holder.describe()}: wait "
                              "for that driver to end, or stop it, then resume")

    # -- taking and giving back ----------------------------------------------------------------

    def acquire(self) -> str | None:
        """Take the lease and start heartbeating. Raises SweepBusyError naming a live holder;
        returns a one-line note when a stale lease was taken over."""
        self.fs.create_dir(self.dir, recursive=True)
        previous = self.holder()
        if self.alive(previous):
            raise self.busy_error(previous)
        (self._take_local if self.local else self._take_remote)(previous)
        self._thread = threading.Thread(target=self._beat, name="lifelab-lease", daemon=True)
        self._thread.start()
        if previous is None:
            return None
        why = (f"it was taken for {previous.sweep}" if previous.sweep != self.dir
               else "its process is gone" if previous.gone()
               else f"its heartbeat is {previous.age():.0f} s old")
        return (f"took over the lease of sweep {self.sweep_uri} from the driver pid "
                f"{previous.pid} on {previous.host}: {why}")

    def release(self) -> None:
        """Stop heartbeating and delete the lease, if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        current = self.holder()
        if current is not None and current.token == self.token:
            with contextlib.suppress(OSError):
                self.fs.delete_file(self.path)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- internals -----------------------------------------------------------------------------

    def _mine(self) -> bytes:
        holder = Holder(host=socket.gethostname(), pid=os.getpid(), sweep=self.dir,
                        heartbeat=time.time(), token=self.token,
                        pid_start=_pid_start(os.getpid()) or "")
        return json.dumps(asdict(holder)).encode()

    def _take_local(self, previous: Holder | None) -> None:
        for name in os.listdir(self.dir):            # left by a driver killed mid-heartbeat
            with contextlib.suppress(OSError):
                path = join(self.dir, name)
                if name.startswith(".lease-") and time.time() - os.stat(path).st_mtime > 60:
                    os.unlink(path)
        tmp = join(self.dir, f".lease-{self.token}.tmp")
        with open(tmp, "wb") as f:
            f.write(self._mine())
        try:
            if os.path.exists(self.path):
                self._remove_stale(previous)
            try:
                os.link(tmp, self.path)      # atomic: fails if another driver got there first
            except FileExistsError:
                raise self.busy_error(self.holder() or previous) from None
        finally:
            os.unlink(tmp)

    def _remove_stale(self, previous: Holder | None) -> None:
        """Delete a stale lease, under a takeover lock (an atomic create) so that of several
        drivers taking it over at once one removes it, once, and no fresh lease is lost."""
        lock = join(self.dir, ".lease-takeover")
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            with contextlib.suppress(OSError):       # left by a driver killed mid-takeover
                if time.time() - os.stat(lock).st_mtime > self.stale_s:
                    os.unlink(lock)
            raise self.busy_error(previous or self.holder()) from None
        try:
            current = self.holder()                  # it may have changed since it was read
            if self.alive(current):
                raise self.busy_error(current)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        finally:
            os.close(fd)
            os.unlink(lock)

    def _take_remote(self, previous: Holder | None) -> None:
        self._write()
        time.sleep(self.settle_s)
        current = self.holder()
        if current is None or current.token != self.token:
            raise self.busy_error(current or previous)

    def _write(self) -> None:
        if self.local:
            tmp = join(self.dir, f".lease-{self.token}.tmp")
            with open(tmp, "wb") as f:
                f.write(self._mine())
            os.replace(tmp, self.path)
        else:
            with self.fs.open_output_stream(self.path) as out:
                out.write(self._mine())

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = self.holder()
            if current is not None and current.token != self.token:
                self.lost = current                  # taken over: never write over it
                return
            with contextlib.suppress(OSError):       # a missed beat; the next one may work
                self._write()


class LeaseCallback(tune.Callback):
    """Stops this driver once another one has taken its sweep over (after its heartbeat stalled
    for longer than the lease lives): two drivers must never write one sweep."""

    def __init__(self, lease: Lease):
        self.lease = lease

    def __getstate__(self) -> dict:
        return {"lease": None}             # pickled with the experiment; a resume brings its own

    def on_step_end(self, iteration, trials, **info) -> None:
        lost = self.lease.lost if self.lease is not None else None
        if lost is not None:
            raise SweepBusyError(f"sweep {self.lease.sweep_uri} was taken over by "
                                 f"{lost.describe()}: this driver stops; let that one finish")


def _pid_start(pid: int) -> str | None:
    """The start time of a process (Linux /proc; "" elsewhere), None if it does not exist or is
    a zombie (killed, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
