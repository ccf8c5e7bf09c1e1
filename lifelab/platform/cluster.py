"""Connect to Ray: an embedded local Ray by default, or a cluster at an address."""

from __future__ import annotations

import atexit
import glob
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time

from lifelab.errors import ClusterError
from lifelab.platform import watchdog

TEMP_PREFIX = "/tmp/lifelab-ray-"
# a temp dir without an owner record this old, named by no process, is a dead session's
ORPHAN_AGE_S = 600
_embedded: dict = {}        # the Ray this process started: temp_dir, watchdog (a Popen)


def connect(address: str | None = None, num_cpus: int | None = None,
            code: list[str] | None = None, verbose: bool = False) -> None:
    """Start or join Ray once per process; `code`: local package folders Ray ships to every
    worker (its runtime environment's `py_modules`), so learners defined there import anywhere.
    `verbose`: Ray's own log lines and the workers' output on the console (else lifelab's only).

    No address (and no RAY_ADDRESS): an embedded local Ray whose temp dir is short, because Unix
    socket paths are limited to 107 bytes, private to this user, and watched: `shutdown` (also at
    exit) stops it and removes the temp dir, and a watchdog process does so if this process is
    killed. An address ('auto', 'host:port', 'ray://...'): that cluster; with token
    authentication on, the token comes from RAY_AUTH_TOKEN(_PATH) or ~/.ray/auth_token.
    """
    import ray

    # Ray logs to the 'ray' logger: connection notes, package uploads, Tune's trial errors
    # with tracebacks. Without --verbose lifelab reports what matters itself.
    logging.getLogger("ray").setLevel(logging.INFO if verbose else logging.CRITICAL)
    if ray.is_initialized():
        # (a notebook's or a test's Ray: its workers see the code only if it was started with it)
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address not in ("auto", "local") and "://" not in address:
        _reachable(address)
    runtime_env = {"py_modules": list(code)} if code else None
    quiet = {"log_to_driver": verbose, "configure_logging": verbose}
    try:
        if address is None:
            reap_dead_sessions()
            # Ray makes its temp and session dirs world-writable (for a shared /tmp/ray), again
            # at every worker start: they live inside our private (0700) dir instead
            ray_dir = os.path.join(_watched_temp_dir(), "ray")
            ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=ray_dir,
                     runtime_env=runtime_env, **quiet)
        else:
            ray.init(address=address, runtime_env=runtime_env, **quiet)
    except (ConnectionError, RuntimeError, ValueError, SystemExit) as exc:
        # (Ray exits the process when it gives up on an unreachable GCS)
        shutdown()
        where = address or "a new local Ray"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot connect to {where} ({first_line}): start the cluster "
                           "(`ray up cluster.yaml` or `ray start --head`), check the address, "
                           "and set RAY_AUTH_MODE=token with the cluster's token") from None


def _watched_temp_dir() -> str:
    """A new private temp dir for an embedded Ray, with a watchdog that cleans up after a
    killed us."""
    temp_dir = tempfile.mkdtemp(prefix=os.path.basename(TEMP_PREFIX),
                                dir=os.path.dirname(TEMP_PREFIX))
    me = os.getpid()
    # its own session: Ctrl-C or a SIGKILL of our process group does not stop it
    dog = subprocess.Popen([sys.executable, "-I", watchdog.__file__, str(me),
                            str(watchdog.start_time(me) or "-"), temp_dir],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    watchdog.write_owner(temp_dir, me, dog.pid)
    _embedded.update(temp_dir=temp_dir, watchdog=dog)
    atexit.register(shutdown)
    return temp_dir


def shutdown() -> None:
    """Stop the embedded Ray this process started (if any): its processes, its temp dir and
    its watchdog. A Ray that someone else started (a notebook's, a cluster) is left alone."""
    temp_dir, dog = _embedded.pop("temp_dir", None), _embedded.pop("watchdog", None)
    if temp_dir is None:
        return
    import ray

    ray.shutdown()
    exclude = {dog.pid} if dog else set()
    watchdog.stop_session(temp_dir, exclude=exclude, timeout_s=10.0)
    if dog:
        dog.terminate()
        dog.wait()


def reap_dead_sessions() -> list[str]:
    """Stop what is left of the embedded Rays of lifelab processes that were killed and whose
    watchdog is gone too, and remove their temp dirs; returns those dirs. Another user's dirs
    (unreadable) and a live lifelab's are left alone; an older lifelab's (no owner record) are
    removed once no process names them."""
    reaped = []
    for temp_dir in glob.glob(TEMP_PREFIX + "*"):
        owner = watchdog.read_owner(temp_dir)
        if owner is None:
            # an older lifelab's, or one starting: dead if old and no process names it (there
            # is none to stop), and then its dir goes, quietly
            try:
                young = time.time() - os.stat(temp_dir).st_mtime < ORPHAN_AGE_S
            except OSError:
                continue
            if not young and os.access(temp_dir, os.W_OK) and \
                    not watchdog.session_processes(temp_dir):
                watchdog.remove_dir(temp_dir)
            continue
        if (watchdog.alive(owner.get("driver"), owner.get("driver_start"))
                or watchdog.alive(owner.get("watchdog"), owner.get("watchdog_start"))):
            continue
        watchdog.stop_session(temp_dir)
        reaped.append(temp_dir)
    return reaped


def gpus_per_trial(cpus_per_trial: float) -> float:
    """`gpu: auto`: share each GPU among as many trials as its node has CPUs for (a 4-CPU,
    1-GPU node runs four 1-CPU trials at 0.25 GPU each); 0 on a cluster without GPUs."""
    import ray

    total = ray.cluster_resources()
    gpus, cpus = total.get("GPU", 0), total.get("CPU", 0)
    if gpus <= 0:
        return 0.0
    trials_per_gpu = max(1, int(cpus / gpus // cpus_per_trial))
    return 1.0 / trials_per_gpu


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not after Ray's minutes of reconnecting, when nothing listens there."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot reach a Ray cluster at {address} ({exc}): start it (`ray up "
                           "cluster.yaml` or `ray start --head`) or check the address") from None


def check_resources(cpu: float, gpu: float | str, address: str | None) -> None:
    """Refuse a per-trial request no node can ever satisfy, instead of waiting forever. On an
    embedded Ray the nodes are all there is; a cluster may autoscale to nodes not yet started,
    so there the request is left to the cluster."""
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        return
    gpus = 0.0 if gpu == "auto" else float(gpu)
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpus for n in nodes):
        return
    most_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    most_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    raise ClusterError(f"no node can run a trial of {cpu:g} CPU and {gpus:g} GPU (this machine "
                       f"has {most_cpu:g} CPU, {most_gpu:g} GPU): lower resources.cpu / "
                       "resources.gpu, or run on a cluster (--address) that has them")
