"""The embedded Ray keeps no secret at rest and listens on loopback only: one Ray, started the
way lifelab starts it, with AWS keys in the driver's environment (as for s3:// storage)."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ray

KEY_ID = "AKIALIFELABFAKE12345"
SECRET = "lifelab/fake+secret/0123456789abcdefghijKLMNOP"

# Runs in a process of its own: its own embedded Ray (not the test session's), its own HOME,
# and Ray's default authentication (conftest turns it off for the other tests).
CHILD = textwrap.dedent('''
    import ipaddress, json, os, ray
    from lifelab.platform import cluster, watchdog

    def listening():
        """socket inode -> (address, port) of every listening TCP socket."""
        found = {}
        for table in ("tcp", "tcp6"):
            with open(f"/proc/net/{table}") as f:
                for line in list(f)[1:]:
                    fields = line.split()
                    if fields[3] != "0A":
                        continue
                    ip, port = fields[1].split(":")
                    raw = bytes.fromhex(ip)
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    found[fields[9]] = (str(ipaddress.ip_address(raw)), int(port, 16))
        return found

    def sockets_of(pid):
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
        return inodes

    cluster.connect(None, num_cpus=1)

    @ray.remote
    def task():
        return os.environ.get("AWS_SECRET_ACCESS_KEY")

    report = {"worker_sees_key": ray.get(task.remote()) == os.environ["AWS_SECRET_ACCESS_KEY"]}
    temp_dir = cluster._embedded["temp_dir"]
    pids = set(watchdog.session_processes(temp_dir)) | {os.getpid()}
    table = listening()
    report["listening"] = sorted({table[i] for p in pids for i in sockets_of(p) if i in table})
    report["processes"] = len(pids)
    ray.shutdown()                                   # its logs complete, the dir still there
    token_path = os.path.expanduser("~/.ray/auth_token")
    token = open(token_path).read().strip().encode()
    secrets = [os.environ[k].encode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    report.update(temp_dir=temp_dir, temp_mode=os.stat(temp_dir).st_mode,
                  temp_uid=os.stat(temp_dir).st_uid, token_mode=os.stat(token_path).st_mode,
                  files=0, leaks=[], foreign=[])
    for root, dirs, files in os.walk(temp_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.lstat(path).st_uid != os.getuid():
                report["foreign"].append(path)
            if name in files and os.path.isfile(path) and not os.path.islink(path):
                report["files"] += 1
                data = open(path, "rb").read()
                report["leaks"] += [path for s in secrets + [token] if s in data]
    cluster.shutdown()
    report["removed"] = not os.path.exists(temp_dir)
    print("REPORT " + json.dumps(report))
''')


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "AWS_")) and k != "HOME"}
    env.update(HOME=str(home), AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET,
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT "):])


def test_no_secret_reaches_a_file_of_the_session(report):
    assert report["worker_sees_key"]            # (workers inherit the driver's environment)
    assert report["files"] > 5                  # (logs were written, and read)
    assert report["leaks"] == []                # AWS keys and the Ray token: in no file


def test_the_session_dir_and_token_are_private(report):
    assert stat.S_IMODE(report["temp_mode"]) == 0o700 and report["temp_uid"] == os.getuid()
    assert report["foreign"] == []
    assert stat.S_IMODE(report["token_mode"]) == 0o600
    assert report["removed"]


def test_every_ray_process_listens_on_loopback_only(report):
    import ipaddress

    assert report["processes"] >= 3 and report["listening"]
    for host, port in report["listening"]:
        ip = ipaddress.ip_address(host)
        assert ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped
                                  and ip.ipv4_mapped.is_loopback), (host, port)
