"""Honest selection: learners score a validation split they never train on, and searches select
on it; a test metric is refused unless the spec opts in."""

import pytest
import torch

from lifelab.errors import ConfigError
from lifelab.learners.baselines import Finetune
from lifelab.learners.hnet import HNet
from lifelab.platform.data import load_dataset
from lifelab.searches.spec import spec_from_dict

STREAM = {"kind": "split", "tasks": 3, "scenario": "class", "steps_per_task": 30,
          "validation": 0.1}


def run(cls, poison: bool, **config):
    """Train to the end; with `poison`, every validation and test label is wrong first."""
    learner = cls({"stream": STREAM, "seed": 1, **config}, data=load_dataset("mnist5k"))
    if poison:
        for task in learner.stream.tasks:     # a split stream: each task owns its tensors
            for y in (task._y_val, task._y_test):
                y.copy_((y + 1) % 10)
    losses = []
    while not learner.done:
        losses.append(learner.step_round())
    return learner, losses


@pytest.mark.parametrize("cls, config", [(Finetune, {"hidden": [16]}),
                                         (HNet, {"target_hidden": [16], "hnet_hidden": [8]})])
def test_training_never_sees_validation_or_test_labels(cls, config):
    clean, clean_metrics = run(cls, poison=False, **config)
    poisoned, poisoned_metrics = run(cls, poison=True, **config)
    for a, b in zip(clean.model.state_dict().values(), poisoned.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)                                # bit for bit the same training
    assert [m["train_loss"] for m in clean_metrics] == [m["train_loss"] for m in poisoned_metrics]
    # ... while what is scored on those labels did change: the poison reached them
    assert clean_metrics[-1]["val_acc_avg"] != poisoned_metrics[-1]["val_acc_avg"]
    assert clean_metrics[-1]["acc_avg"] != poisoned_metrics[-1]["acc_avg"]


def test_learners_report_validation_twins_and_matrices():
    learner, metrics = run(Finetune, poison=False, hidden=[16])
    final = metrics[-1]
    for name in ("acc_avg", "acc_avg_til", "acc_avg_cil", "bwt", "forgetting"):
        assert f"val_{name}" in final and 0 <= final["val_acc_avg"] <= 1
    assert len(learner.val_rows) == len(learner.rows) == 3
    assert final["val_acc_avg"] == pytest.approx(sum(learner.val_rows[-1]) / 3)
    state = learner.state_dict()
    fresh = Finetune({"stream": STREAM, "hidden": [16], "seed": 1})
    fresh.load_state_dict(state)
    assert fresh.val_rows == learner.val_rows


def spec(**search):
    return {"learner": "finetune", "stream": STREAM,
            "search": {"scheduler": "fifo", **search}}


def test_the_default_selects_on_validation():
    assert spec_from_dict(spec()).search.metric == "val_acc_avg"


@pytest.mark.parametrize("metric", ["acc_avg", "acc_avg_til", "acc_avg_cil"])
def test_a_test_metric_is_refused_naming_its_validation_twin(metric):
    with pytest.raises(ConfigError, match=f"'{metric}' is scored on test data: select on "
                                          f"'val_{metric}'"):
        spec_from_dict(spec(metric=metric))


def test_select_on_test_opts_in_knowingly():
    chosen = spec_from_dict(spec(metric="acc_avg", select_on_test=True))
    assert chosen.search.metric == "acc_avg" and chosen.search.select_on_test is True
    with pytest.raises(ConfigError, match="select_on_test must be true or false"):
        spec_from_dict(spec(metric="acc_avg", select_on_test="yes"))


def test_a_validation_metric_needs_a_validation_split():
    data = spec()
    data["stream"] = {**STREAM, "validation": 0}
    with pytest.raises(ConfigError, match="stream.validation is 0"):
        spec_from_dict(data)


def test_training_metrics_without_a_twin_are_allowed():
    assert spec_from_dict(spec(metric="train_loss", mode="min")).search.metric == "train_loss"
