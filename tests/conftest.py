"""Shared fixtures: one embedded Ray per test session, short temp dirs, no auth token in ~."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

# Token auth would write ~/.ray/auth_token; tests neither need nor touch it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.pop("RAY_ADDRESS", None)
# Tune state is signed with this key, not one created in the home dir of whoever runs the suite
os.environ.setdefault("LIFELAB_STATE_KEY", "lifelab-test-suite")


# Modules whose every test starts Ray (in this process or in a `lifelab` subprocess).
RAY_MODULES = {"test_sweep", "test_resume", "test_multinode", "test_s3", "test_cluster",
               "test_hnet_pbt", "test_byo_learner_sweeps", "test_fuzz_cluster",
               "test_resume_kills"}


def pytest_collection_modifyitems(config, items):
    """Mark what starts Ray `ray`, so `make test-fast` (-m "not ray") runs everything else."""
    for item in items:
        if "ray_session" in item.fixturenames or item.module.__name__ in RAY_MODULES:
            item.add_marker(pytest.mark.ray)


@pytest.fixture
def short_tmp():
    """A temp dir under /tmp short enough for Ray's 107-byte Unix socket paths."""
    path = tempfile.mkdtemp(prefix="ll-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ll-ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny networks run faster on one thread, and two threads spin against other processes
    (trials set their own thread count in their own processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread_after():
    """For tests that build a trainable in this process: it sets the thread count from its CPU
    resources, and the session's one thread comes back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def s3(monkeypatch):
    """An S3-compatible server (moto) on loopback, the AWS_* variables pointing at it, and a
    pyarrow filesystem on it: yields (filesystem, env)."""
    import pyarrow.fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], scheme="http",
                           access_key="test", secret_key="test", region="us-east-1",
                           allow_bucket_creation=True)
    deadline = time.monotonic() + 30
    while True:                       # wait for the server: poll, it starts in under a second
        try:
            fs.create_dir("lifelab-test")
            break
        except OSError:
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.1)
    yield fs, env
    server.terminate()
    server.wait()
