"""Connect to Ray: an embedded local Ray by default, or a cluster at an address."""

from __future__ import annotations

import os
import socket
import tempfile

from lifelab.errors import ClusterError


def connect(address: str | None = None, num_cpus: int | None = None,
            code: list[str] | None = None) -> None:
    """Start or join Ray once per process; `code`: local package folders Ray ships to every
    worker (its runtime environment's `py_modules`), so learners defined there import anywhere.

    No address (and no RAY_ADDRESS): an embedded local Ray whose temp dir is short, because Unix
    socket paths are limited to 107 bytes. An address ('auto', 'host:port', 'ray://...'): that
    cluster; with token authentication on, the token comes from RAY_AUTH_TOKEN(_PATH) or
    ~/.ray/auth_token.
    """
    import ray

    if ray.is_initialized():
        # (a notebook's or a test's Ray: its workers see the code only if it was started with it)
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address not in ("auto", "local") and "://" not in address:
        _reachable(address)
    runtime_env = {"py_modules": list(code)} if code else None
    try:
        if address is None:
            temp_dir = tempfile.mkdtemp(prefix="lifelab-ray-", dir="/tmp")
            ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir,
                     log_to_driver=False, configure_logging=False, runtime_env=runtime_env)
        else:
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError, SystemExit) as exc:
        # (Ray exits the process when it gives up on an unreachable GCS)
        where = address or "a new local Ray"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot connect to {where} ({first_line}): start the cluster "
                           "(`ray up cluster.yaml` or `ray start --head`), check the address, "
                           "and set RAY_AUTH_MODE=token with the cluster's token") from None


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
