"""Connect to Ray: an embedded local Ray by default, or a cluster at an address."""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time

import yaml

from lifelab.errors import ClusterError, ConfigError
from lifelab.platform import watchdog

TEMP_PREFIX = "/tmp/lifelab-ray-"
RESOURCE_WAIT_ENV = "LIFELAB_RESOURCE_WAIT_S"
RESOURCE_WAIT_S = 120.0               # for a node the cluster may still start
RESOURCE_POLL_S = 2.0
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"       # `ray up` puts it on the head node
DEFAULT_TOKEN = "~/.ray/auth_token"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"   # "0": Ray's processes bind loopback only
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
    killed. It listens on loopback only, with token authentication (Ray's default for a new
    local Ray) and a token file only this user can read. Nothing secret is handed to Ray: the
    workers inherit this process's environment (AWS_* included), which Ray does not log, unlike
    a runtime environment's `env_vars`. An address ('auto', 'host:port', 'ray://...'): that
    cluster; with token authentication on, the token comes from RAY_AUTH_TOKEN(_PATH) or
    ~/.ray/auth_token.
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
            _private_token()
            with _loopback_only():
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


@contextlib.contextmanager
def _loopback_only():
    """Start Ray in its local-only mode (its default on macOS and Windows): every process it
    starts binds 127.0.0.1, not every interface. Ray reads the switch at import, hence the
    environment (for its processes) and its constant (for this one), both restored after."""
    from ray._private import ray_constants

    before_env = os.environ.get(LOCAL_ONLY_ENV)
    before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        if before_env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = before_env


def _private_token() -> None:
    """Ray turns token authentication on for a new local Ray and writes a missing token file
    with the default umask, readable by every user: write it first, 0600, and take the group
    and other bits off one that exists (a token is a key to run code as this user)."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or \
            os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH") or DEFAULT_TOKEN)
    try:
        if os.path.exists(path):
            if os.stat(path).st_mode & 0o077 and os.stat(path).st_uid == os.getuid():
                os.chmod(path, 0o600)
        elif not os.environ.get("RAY_AUTH_TOKEN_PATH"):
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))          # (what Ray would write)
    except OSError:
        pass                                            # Ray reports a token it cannot use


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
    1-GPU node runs four 1-CPU trials at 0.25 GPU each); 0 on a cluster without GPUs, and
    without a GPU node type its autoscaler could start."""
    import ray

    total = ray.cluster_resources()
    gpus, cpus = total.get("GPU", 0), total.get("CPU", 0)
    if gpus <= 0 and not _embedded:
        # a cluster that starts its GPU nodes on demand has none yet: size by such a node type
        gpu_types = [t for t in autoscaler_node_types() or [] if t.get("GPU", 0) > 0]
        gpus, cpus = (gpu_types[0]["GPU"], gpu_types[0].get("CPU", 0)) if gpu_types else (0, 0)
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


def check_resources(cpu: float, gpu: float | str, address: str | None,
                    wait_s: float | None = None) -> None:
    """Refuse a per-trial request the cluster cannot provide, instead of Tune's waiting forever.
    An embedded Ray's nodes are all there is: refused at once. On a cluster whose autoscaler's
    node types are known (its config in the GCS, or `ray up`'s on the head node): refused at
    once if no node type has it, else left to the autoscaler, which starts such a node for the
    pending trials. Elsewhere (node types unknown: an autoscaler of another kind, or a cluster
    that someone grows by hand): such a node is requested and awaited `wait_s` seconds
    (LIFELAB_RESOURCE_WAIT_S, default 120)."""
    gpus = 0.0 if gpu == "auto" else float(gpu)
    need = f"a trial of {cpu:g} CPU and {gpus:g} GPU"
    fix = "lower resources.cpu / resources.gpu"
    nodes = _alive_nodes()
    if _fits(nodes, cpu, gpus):
        return
    where = address or os.environ.get("RAY_ADDRESS")
    if not where:
        raise ClusterError(f"no node can run {need} (this machine has {_largest(nodes)}): "
                           f"{fix}, or run on a cluster (--address) that has them")
    node_types = autoscaler_node_types()
    if node_types is not None:
        if _fits(node_types, cpu, gpus):
            return
        raise ClusterError(f"no node of the cluster at {where} can run {need}, nor any node its "
                           f"autoscaler can start (the largest has {_largest(node_types)}): "
                           f"{fix}, or add a node type that has them to the cluster's "
                           "available_node_types (cluster.yaml) and `ray up` again")
    wait_s = resource_wait_s() if wait_s is None else wait_s
    print(f"lifelab: no node of the cluster at {where} can run {need} yet: waiting up to "
          f"{wait_s:g} s for one ({RESOURCE_WAIT_ENV})", file=sys.stderr, flush=True)
    from ray.autoscaler import sdk

    bundle = {"CPU": cpu, **({"GPU": gpus} if gpus else {})}
    sdk.request_resources(bundles=[bundle])        # an autoscaler starts nodes for demand only
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            time.sleep(min(RESOURCE_POLL_S, max(0.0, deadline - time.monotonic())))
            if _fits(nodes := _alive_nodes(), cpu, gpus):
                return
    finally:
        sdk.request_resources(bundles=[])          # from here on, the pending trials ask
    raise ClusterError(f"no node of the cluster at {where} can run {need} (the largest has "
                       f"{_largest(nodes)}), and none joined within {wait_s:g} s: {fix}, add "
                       f"such a node to the cluster, or wait longer ({RESOURCE_WAIT_ENV})")


def resource_wait_s() -> float:
    raw = os.environ.get(RESOURCE_WAIT_ENV, "").strip()
    if not raw:
        return RESOURCE_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{RESOURCE_WAIT_ENV}={raw!r} is not a number of seconds: set it to "
                          f"one (e.g. {RESOURCE_WAIT_S:g}), or unset it")
    return value


def autoscaler_node_types() -> list[dict] | None:
    """The resources of each node type the cluster's autoscaler may start, or None if unknown:
    from the cluster config in the GCS (autoscaler v2, KubeRay), else from the config `ray up`
    leaves on the head node (whose head type is already running)."""
    from ray._private import state

    try:
        config = state.state.get_cluster_config()
    except Exception:   # (an older or unreachable GCS: no config to read)
        config = None
    if config is not None and config.node_group_configs:
        return [dict(group.resources) for group in config.node_group_configs
                if group.max_count != 0]
    try:
        with open(os.path.expanduser(BOOTSTRAP_CONFIG)) as f:
            config = yaml.safe_load(f)
        types, head = config["available_node_types"], config["head_node_type"]
        found = [t.get("resources") for name, t in types.items()
                 if name != head and t.get("max_workers", config.get("max_workers", 0)) > 0]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    # (resources left for Ray to detect on the instance: unknown here)
    return found if all(isinstance(r, dict) and r for r in found) else None


def _alive_nodes() -> list[dict]:
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def _fits(nodes: list[dict], cpu: float, gpus: float) -> bool:
    return any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpus for n in nodes)


def _largest(nodes: list[dict]) -> str:
    most_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    most_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    return f"{most_cpu:g} CPU, {most_gpu:g} GPU"
