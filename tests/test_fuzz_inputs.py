"""Malformed specs and command lines, fed through the front door: each one is exit 2, one
`lifelab: error:` line naming the fix, no traceback, Ray never started, storage unchanged."""

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
from test_cli_errors import RayStarted, user_error

import lifelab.searches.launch as launch

GOOD = {"learner": "finetune", "stream": {"tasks": 2, "steps_per_task": 5},
        "config": {"hidden": [8]}}
BOMB = "a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi",
                                                               strict=True))

# (spec text or mapping, fragment of the one-line message)
SPECS = [
    ("learner: finetune\nconfig: {hidden: *undefined}\n", "not valid YAML"),
    ("learner: finetune\nconfig:\n  hidden: " + "[" * 100_000 + "]" * 100_000 + "\n",
     "nests deeper than"),
    (BOMB + "learner: finetune\n", "expands to more than"),
    ("learner: finetune\nseed: " + str(10 ** 30) + "\n", "seed must be an integer between"),
    ({**GOOD, "seed": -1}, "seed must be an integer between"),
    ({**GOOD, "config": {"hidden": [100_000_000]}}, "more than memory holds"),
    ({**GOOD, "config": {"hidden": [8] * 100}}, "at most 64"),
    ({**GOOD, "stream": {"kind": "split", "tasks": 6, "classes_per_task": 2}},
     "exceeds the 10 classes"),
    ({**GOOD, "search": {"samples": 10 ** 7}}, "more than 10000 trials"),
    ({**GOOD, "search": {"metric": "forgetting"}}, "only from its second finished task"),
    ({**GOOD, "search": {"metric": "val_bwt"}}, "only from its second finished task"),
    ({**GOOD, "search": {"metric": "acc_avg"}}, "is scored on test data"),
    ({**GOOD, "search": {"metric": "nope"}}, "is not reported by learner"),
    ({**GOOD, "name": ""}, "not a valid sweep name"),
    ({**GOOD, "name": "x\n"}, "not a valid sweep name"),
    ({**GOOD, "name": "../escape"}, "not a valid sweep name"),
    ({**GOOD, "name": "a/b"}, "not a valid sweep name"),
    ({**GOOD, "name": "x" * 200}, "not a valid sweep name"),
    ({**GOOD, "learner": "no_such"}, "unknown learner"),
    ({**GOOD, "learner": 42}, "learner must be a name"),
    ({**GOOD, "learner": {"choice": []}}, "empty search space"),
    ({**GOOD, "config": {"lr": -1}}, "must be a number > 0"),
    ({**GOOD, "config": {"lr": "fast"}}, "must be a number"),
    ("learner: finetune\nconfig: {lr: .nan}\n", "must be a finite number"),
    ({**GOOD, "config": {"lr": {"loguniform": [0, 1]}}}, "loguniform needs low > 0"),
    ({**GOOD, "config": {"lr": {"uniform": [1, 1]}}}, "needs low < high"),
    ({**GOOD, "stream": {"tasks": 0}}, "stream.tasks must be an integer"),
    ({**GOOD, "stream": {"tasks": True}}, "stream.tasks must be an integer"),
    ({**GOOD, "stream": {"dataset": "imagenet"}}, "stream.dataset 'imagenet' is unknown"),
    ({**GOOD, "stream": {"validation": 0.9}}, "stream.validation must be a fraction"),
    ({**GOOD, "stream": "mnist"}, "stream must be a mapping"),
    ({**GOOD, "resources": {"cpu": -1}}, "resources.cpu must be a number > 0"),
    ({**GOOD, "resources": {"gpu": "lots"}}, "resources.gpu must be a number"),
    ({**GOOD, "search": {"scheduler": "pbt"}}, "needs search.mutations"),
    ({**GOOD, "search": {"scheduler": "asha"}}, "needs stop.rounds"),
    ({**GOOD, "search": {"scheduler": "hyperband"}}, "search.scheduler 'hyperband' is unknown"),
    ({**GOOD, "protocol": {"kind": "first_tasks", "k": 5}}, "below stream.tasks"),
    ({**GOOD, "final": {"seeds": 0}}, "final.seeds must be an integer"),
    ({**GOOD, "code": "pkg"}, "code must be a list of package folders"),
    ({**GOOD, "code": ["/no/such/folder"]}, "code folder /no/such/folder does not exist"),
    ({**GOOD, "unknown": 1}, "spec.unknown is not a known key"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("\xff\xfe", "not UTF-8 text"),
]


def tree_hash(root) -> str:
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        digest.update(dirpath.encode())
        for name in sorted(filenames):
            with open(os.path.join(dirpath, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()


@pytest.fixture
def storage(tmp_path, monkeypatch):
    """A storage holding one existing sweep, and no Ray to be reached."""
    def started(*args, **kwargs):
        raise RayStarted("a bad input reached Ray: validate before connecting")

    monkeypatch.setattr(launch, "connect", started)
    monkeypatch.delenv("LIFELAB_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "store"
    (root / "old").mkdir(parents=True)
    (root / "old" / "spec.yaml").write_text(json.dumps(GOOD))
    return root


@pytest.mark.parametrize("spec, message", SPECS, ids=range(len(SPECS)))
def test_a_malformed_spec_is_one_line_and_writes_nothing(capsys, storage, spec, message):
    path = storage.parent / "spec.yaml"
    text = spec if isinstance(spec, str) else json.dumps(spec)
    path.write_bytes(text.encode("latin-1") if text == "\xff\xfe" else text.encode())
    before = tree_hash(storage)
    start = time.monotonic()
    line = user_error(capsys, "sweep", str(path), "--storage", str(storage))
    assert message in line, line
    assert time.monotonic() - start < 30                     # no hang, no blow-up
    assert tree_hash(storage) == before


@pytest.mark.parametrize("argv, message", [
    (["sweep", "demo", "--name", ""], "not a valid sweep name"),
    (["sweep", "demo", "--name", "x\n"], "not a valid sweep name"),
    (["sweep", "demo", "--name", "old"], "already exists"),
    (["sweep", "demo", "--samples", "-3"], "search.samples must be an integer >= 1"),
    (["resume", "store/missing"], "does not exist"),
    (["status", "store/missing"], "does not exist"),
    (["report", "store"], "is not a lifelab sweep"),
    (["list", "no_such_learner"], "unknown learner"),
    (["evaluate", "store/missing"], "does not exist"),
])
def test_a_malformed_command_line_is_one_line_and_writes_nothing(capsys, storage, argv,
                                                                 message):
    before = tree_hash(storage)
    if argv[0] == "sweep":
        argv = [*argv, "--storage", str(storage)]
    line = user_error(capsys, *argv)
    assert message in line, line
    assert tree_hash(storage) == before


def test_an_unreachable_address_fails_within_seconds(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LIFELAB_STORAGE")}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "lifelab", "sweep", "demo", "--storage",
                           str(tmp_path / "store"), "--address", "127.0.0.1:1"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and time.monotonic() - start < 60
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "cannot reach a Ray cluster at 127.0.0.1:1" in lines[0]
    assert not (tmp_path / "store").exists() or not os.listdir(tmp_path / "store")
