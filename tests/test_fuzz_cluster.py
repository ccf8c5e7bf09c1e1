"""Resources no node of an embedded Ray has: refused at launch in one line, nothing written
(instead of trials pending forever)."""

import json
import os
import subprocess
import sys

import pytest

SPEC = {"learner": "finetune", "stream": {"tasks": 2, "steps_per_task": 5},
        "config": {"hidden": [8]}}


@pytest.mark.parametrize("resources, message", [
    ({"cpu": 1000}, "no node can run a trial of 1000 CPU and 0 GPU"),
    ({"cpu": 1, "gpu": 1}, "no node can run a trial of 1 CPU and 1 GPU"),
])
def test_resources_no_node_has_are_refused_at_launch(short_tmp, resources, message):
    spec = os.path.join(short_tmp, "spec.yaml")
    with open(spec, "w") as f:
        json.dump({**SPEC, "resources": resources}, f)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LIFELAB_STORAGE")}
    env["RAY_AUTH_MODE"] = "disabled"
    done = subprocess.run([sys.executable, "-m", "lifelab", "sweep", spec, "--storage",
                           os.path.join(short_tmp, "store")], env=env, capture_output=True,
                          text=True, timeout=300, cwd=short_tmp)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert message in lines[0] and "Traceback" not in done.stdout + done.stderr
    assert not os.path.exists(os.path.join(short_tmp, "store", "spec"))
