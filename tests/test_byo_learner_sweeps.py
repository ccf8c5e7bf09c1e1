"""Sweeps of learners defined outside lifelab: shipped to a cluster's workers by the spec's
`code`, or registered in the driver with `lifelab.register_learner`; the Python API's tables."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import lifelab
from lifelab.errors import LifelabError
from lifelab.learners.baselines import Finetune
from lifelab.trainables import registry

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "byo_multinode_sweep.py"
STREAM = {"kind": "split", "tasks": 2, "scenario": "class", "steps_per_task": 20}


def test_a_module_path_learner_shipped_by_code_runs_on_every_node(short_tmp):
    package = ROOT / "examples" / "replay-learner" / "my_replay"
    spec = Path(short_tmp) / "spec.yaml"
    spec.write_text(json.dumps({
        "name": "byo", "learner": "my_replay.learner:Replay", "stream": STREAM,
        "code": [os.path.relpath(package, short_tmp)],       # relative to the spec file
        "config": {"buffer_size": {"grid": [16, 32]}, "hidden": [16], "steps_per_round": 10},
    }))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env["RAY_AUTH_MODE"] = "disabled"
    done = subprocess.run([sys.executable, str(SCRIPT), str(spec), short_tmp], env=env,
                          cwd=short_tmp, text=True, capture_output=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = Path(short_tmp) / "byo" / "results"
    trials = pd.read_parquet(results / "trials")
    assert len(trials) == 2 and set(trials.status) == {"TERMINATED"}
    assert set(trials.learner) == {"my_replay.learner:Replay"}
    metrics = pd.read_parquet(results / "metrics")
    fill = metrics[metrics.name == "buffer_fill"].groupby("trial_id").value.max()
    assert sorted(fill) == [16.0, 32.0]                    # each trial its own buffer size
    accuracy = pd.read_parquet(results / "accuracy")
    assert len(accuracy[accuracy.split == "test"]) == 2 * 3   # rows of 1 and 2 tasks, per trial


class Tagged(Finetune):
    """Finetuning that reports a constant only this test module defines."""
    name = "tagged"
    metrics = (*Finetune.metrics, "tag")

    def round_metrics(self, train_loss):
        return {**super().round_metrics(train_loss), "tag": 7.0}


class Crashes(Finetune):
    """Fails in its second round."""
    name = "crashes"

    def step_round(self):
        if self.step_in_task or self.task:
            raise RuntimeError("boom")
        return super().step_round()


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(registry, "_registered", {})
    lifelab.register_learner("tagged", Tagged)
    lifelab.register_learner("crashes", Crashes)


def test_python_api_runs_a_registered_learner_and_returns_tables(ray_session, short_tmp,
                                                                  registered, capfd):
    tables = lifelab.sweep({"name": "api", "learner": "tagged", "stream": STREAM,
                            "config": {"hidden": [8], "steps_per_round": 10},
                            "search": {"samples": 2}},
                           storage=short_tmp, progress=0)
    out, err = capfd.readouterr()
    assert out == "", out                                   # progress=0: nothing printed
    assert set(tables.trials.learner) == {"tagged"} and len(tables.trials) == 2
    tags = tables.metrics[tables.metrics.name == "tag"]
    assert len(tags) == 2 * 4 and (tags.value == 7.0).all()   # 4 rounds per trial, on workers
    again = lifelab.load(f"{short_tmp}/api")
    assert again.metrics.equals(tables.metrics)


def test_python_api_raises_naming_the_trials_that_errored(ray_session, short_tmp, registered):
    with pytest.raises(LifelabError, match=r"1 of 1 trials errored \(\w+_00000\)"):
        lifelab.sweep({"name": "crash", "learner": "crashes", "stream": STREAM,
                       "config": {"hidden": [8], "steps_per_round": 10}},
                      storage=short_tmp, progress=0)
    trials = pd.read_parquet(f"{short_tmp}/crash/results/trials")
    assert list(trials.status) == ["ERROR"] and "boom" in trials.error.iloc[0]
