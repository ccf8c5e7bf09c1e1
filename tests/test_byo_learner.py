"""A researcher's own learner, from outside lifelab: by module path, by entry point and by
`lifelab.register_learner`; every bad registration is one line before Ray starts."""

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli_errors import RayStarted, snapshot, user_error

import lifelab
import lifelab.searches.launch as launch
from lifelab.errors import ConfigError
from lifelab.searches.spec import spec_from_dict
from lifelab.trainables import registry

EXAMPLE = Path(__file__).parents[1] / "examples" / "replay-learner"
STREAM = {"kind": "split", "tasks": 2, "scenario": "class", "steps_per_task": 20}


@pytest.fixture
def no_ray(monkeypatch):
    def started(*args, **kwargs):
        raise RayStarted("a bad registration reached Ray: validate before connecting")

    monkeypatch.setattr(launch, "connect", started)


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_registered", {})


def test_a_learner_by_module_path_from_a_code_folder(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))        # import_code extends it
    spec = spec_from_dict({"learner": "my_replay.learner:Replay", "stream": STREAM,
                           "code": [str(EXAMPLE / "my_replay")],
                           "config": {"buffer_size": {"choice": [50, 100]}}})
    assert spec.code == [str(EXAMPLE / "my_replay")]
    cls = registry.learner_class("my_replay.learner:Replay")
    assert issubclass(cls, lifelab.ContinualLearner) and cls.__module__ == "my_replay.learner"
    learner = cls({"stream": STREAM, "buffer_size": 30})
    while not learner.done:
        metrics = learner.step_round()
    assert metrics["buffer_fill"] == 30 and len(learner.rows) == 2


def test_code_folders_are_resolved_against_the_spec_file(tmp_path, monkeypatch):
    from lifelab.searches.spec import load_spec

    monkeypatch.setattr(sys, "path", list(sys.path))
    spec_file = EXAMPLE / "spec-for-test.yaml"
    rel = os.path.relpath(EXAMPLE / "my_replay", tmp_path)
    (tmp_path / "s.yaml").write_text(f"learner: my_replay.learner:Replay\ncode: [{rel}]\n"
                                     "stream: {kind: split, tasks: 2}\n")
    monkeypatch.chdir("/")
    assert load_spec(str(tmp_path / "s.yaml")).code == [str(EXAMPLE / "my_replay")]
    assert not spec_file.exists()


def test_register_learner_names_a_class_for_specs_and_list(clean_registry, capsys):
    from lifelab.cli import main
    from lifelab.learners.baselines import Finetune

    class Mine(Finetune):
        """My variant of finetuning."""
        name = "mine"

    lifelab.register_learner("mine", Mine)
    assert registry.learner_class("mine") is Mine
    spec = spec_from_dict({"learner": {"choice": ["mine", "finetune"]}, "stream": STREAM})
    assert spec.learner_names() == ["mine", "finetune"]
    assert main(["list"]) == 0
    assert ["mine", "My", "variant", "of", "finetuning"] in [
        line.split() for line in capsys.readouterr().out.splitlines()]


class NotALearner:
    params: dict = {}


class Abstract(lifelab.Learner):
    name = "abstract"


def _bad_params():
    from lifelab.learners.baselines import Finetune

    return type("BadParams", (Finetune,), {"params": {"lr": 0.1}})


def _bad_default():
    from lifelab.learners.baselines import Finetune

    return type("BadDefault", (Finetune,), {"params": {"lr": lifelab.Param(-1.0, float,
                                                                           positive=True)}})


@pytest.mark.parametrize("learner, message", [
    ("no_such_module_xyz:Learner", "cannot import no_such_module_xyz"),
    ("lifelab.learners.baselines:Nope", "has no 'Nope': check the name after ':'"),
    ("lifelab.learners.baselines:torch", "is a module, not a class"),
    ("test_byo_learner:NotALearner", "is not a lifelab.Learner: subclass"),
    ("test_byo_learner:Abstract", "does not implement done, load_state_dict, state_dict, "
                                  "step_round"),
    ("no_such_learner", "unknown learner 'no_such_learner'"),
    (":Replay", "must be 'package.module:name'"),
])
def test_each_bad_learner_in_a_spec_is_one_line_before_ray(capsys, tmp_path, no_ray, learner,
                                                           message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"learner: {{choice: [finetune, '{learner}']}}\nstream: {{tasks: 2}}\n")
    before = snapshot(tmp_path)
    line = user_error(capsys, "sweep", str(spec), "--storage", str(tmp_path / "sweeps"))
    assert message in line
    assert snapshot(tmp_path) == before                      # nothing written


@pytest.mark.parametrize("make, message", [
    (lambda: NotALearner, "is not a lifelab.Learner"),
    (lambda: 42, "is a int, not a class"),
    (_bad_params, "params['lr'] must be a lifelab.Param"),
    (_bad_default, "default of 'lr' is invalid"),
])
def test_register_learner_refuses_what_breaks_the_contract(clean_registry, make, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        lifelab.register_learner("bad", make())
    assert "bad" not in registry.learner_names()


def test_register_learner_refuses_a_bad_name(clean_registry):
    from lifelab.learners.baselines import Finetune

    for name in ("", "a:b", "has space", "../x"):
        with pytest.raises(ConfigError, match="is not valid"):
            lifelab.register_learner(name, Finetune)


@pytest.mark.parametrize("learner, mutations, message", [
    ("finetune", {"hidden": [[8], [16]]}, "changes the architecture of learner 'finetune'"),
    ("hnet", {"target_hidden": [[8], [16]]}, "only hnet_hidden, task_emb_dim, chunk_emb_dim"),
    ("hnet", {"hnet_hidden": [[8, 8], [8, 8, 8]]}, "cannot change the number of layers"),
])
def test_mutating_what_a_learner_cannot_adapt_is_refused(learner, mutations, message):
    with pytest.raises(ConfigError, match=message):
        spec_from_dict({"learner": learner, "stream": STREAM, "stop": {"rounds": 2},
                        "search": {"scheduler": "pbt", "samples": 2, "mutations": mutations}})


def test_an_entry_point_learner_from_an_installed_package(tmp_path):
    """The example package installed as a user would (pip), then named by its entry point."""
    source, target = tmp_path / "source", tmp_path / "site"
    shutil.copytree(EXAMPLE, source)                 # the build writes next to the sources
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    listed = subprocess.run([sys.executable, "-m", "lifelab", "list"], env=env, text=True,
                            capture_output=True, timeout=120, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:2] == ["my_replay", "Experience"]
               for line in listed.stdout.splitlines())
    shown = subprocess.run([sys.executable, "-m", "lifelab", "list", "my_replay"], env=env,
                           text=True, capture_output=True, timeout=120, cwd=tmp_path)
    assert shown.returncode == 0 and "buffer_size" in shown.stdout
    assert "buffer_fill" in shown.stdout


def test_a_dataset_of_ones_own_feeds_the_streams(monkeypatch):
    from lifelab.learners.baselines import Finetune

    monkeypatch.syspath_prepend(str(EXAMPLE))
    stream = {**STREAM, "dataset": "my_replay.data:noisy_mnist"}
    learner = Finetune({"stream": stream, "hidden": [16]})
    assert learner.stream.config.dataset == "my_replay.data:noisy_mnist"
    x, _ = learner.stream.tasks[0].eval_set("test")
    clean = Finetune({"stream": STREAM, "hidden": [16]}).stream.tasks[0].eval_set("test")[0]
    assert x.shape == clean.shape and not torch.equal(x, clean)     # the noisy pixels
    while not learner.done:
        learner.step_round()
    assert len(learner.rows) == 2


def not_a_dataset():
    return {"x": 1}


def wrong_dtype():
    from lifelab.platform.data import load_dataset

    d = load_dataset("mnist5k")
    return dataclasses.replace(d, y_train=d.y_train.float())


@pytest.mark.parametrize("dataset, message", [
    ("test_byo_learner:not_a_dataset", "returned a dict, not a lifelab.platform.data.Dataset"),
    ("test_byo_learner:wrong_dtype", "y_train int64 (N,)"),
    ("test_byo_learner:STREAM", "is not a function"),
    ("no_such_data_mod:load", "cannot import no_such_data_mod"),
])
def test_a_bad_dataset_function_is_one_line_before_ray(capsys, tmp_path, no_ray, dataset,
                                                       message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"learner: finetune\nstream: {{tasks: 2, dataset: '{dataset}'}}\n")
    line = user_error(capsys, "sweep", str(spec), "--storage", str(tmp_path / "sweeps"))
    assert message in line
    assert not (tmp_path / "sweeps").exists()
