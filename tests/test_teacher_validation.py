"""The teacher's validation students: reported as val_<metric>, selected on; disjoint from the
test students and from meta-training in seeds, initial weights and images, so that changing
anything about the test side leaves training and validation bit-for-bit alone."""

import dataclasses

import pytest
import torch
from test_analysis import trial_row, write_spec
from test_teacher_students import TINY

from lifelab.analysis.status import status_text, sweep_status
from lifelab.errors import ConfigError
from lifelab.learners.teacher import Teacher
from lifelab.learners.teacher.baselines import start
from lifelab.learners.teacher.learner import META_TEST_METRICS
from lifelab.platform.data import load_dataset
from lifelab.platform.store import ResultStore
from lifelab.platform.streams import hold_out
from lifelab.searches.spec import spec_from_dict

CONFIG = {**TINY, "meta_steps": 8, "val_students": 2}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def run(config: dict, data) -> tuple[Teacher, list[dict]]:
    learner = Teacher(config, data=data)
    metrics = []
    while not learner.done:
        metrics.append(learner.step_round())
    return learner, metrics


def validation_indices(data, config: dict) -> torch.Tensor:
    """Which training images the learner holds out (the same hold-out the stream uses)."""
    ids = torch.arange(len(data.y_train))
    return hold_out(ids, data.y_train, 0.1, config.get("stream", {}).get("seed", 0))[2]


def test_every_meta_test_metric_has_a_validation_twin_that_differs(digits):
    _, metrics = run(CONFIG, digits)
    last = metrics[-1]
    reported = {m for m in META_TEST_METRICS if m in last}
    assert reported >= {"loss_teacher", "acc_adam", "loss_ratio_adam", "loss_ratio_adam_2n"}
    assert {f"val_{m}" for m in reported} <= set(last) <= set(Teacher.metrics)
    for name in reported:                        # other students, other images: other numbers
        assert last[f"val_{name}"] != last[name], name


def test_validation_test_and_meta_training_students_never_share_seeds_or_weights(digits):
    learner = Teacher({**CONFIG, "eval_students": 3, "val_students": 3}, data=digits)
    seen = []
    draw = learner.sample_task
    learner.sample_task = lambda: seen.append(draw()) or seen[-1]
    while not learner.done:
        learner.step_round()
    val, test = learner.heldout_tasks("val"), learner.heldout_tasks("test")
    train = {t.seed for t in seen}
    assert len(seen) == learner.students == 3 and len(val) == len(test) == 3
    assert not train & {t.seed for t in val + test}
    assert not {t.seed for t in val} & {t.seed for t in test}
    inits = [start(t, learner.eval_data, 1, 1, learner.device)[1] for t in val + test]
    assert all(not torch.equal(a, b) for i, a in enumerate(inits) for b in inits[i + 1:])
    # a meta-training draw that would hit a held-out seed is drawn again
    state = learner.generator.get_state()
    clash = learner.sample_task()
    learner.generator.set_state(state)
    learner.reserved.add(clash.seed)
    assert learner.sample_task().seed not in learner.reserved


def test_a_poisoned_test_side_leaves_training_and_validation_bit_for_bit(digits):
    _, clean = run(CONFIG, digits)
    # test labels scrambled, and other test students: only test metrics may move
    poisoned = dataclasses.replace(digits, y_test=torch.roll(digits.y_test, 1))
    teacher, dirty = run({**CONFIG, "eval_students": 2}, poisoned)
    for a, b in zip(clean, dirty, strict=True):
        untouched = [k for k in a if k.startswith("val_") or k in ("meta_loss", "train_loss")]
        assert len(untouched) > 10 and {k: a[k] for k in untouched} == \
            {k: b[k] for k in untouched}
    assert clean[-1]["acc_teacher"] != dirty[-1]["acc_teacher"]
    assert clean[-1]["loss_teacher"] != dirty[-1]["loss_teacher"]   # other students
    first, _ = run(CONFIG, digits)
    assert all(torch.equal(p, q) for p, q in zip(first.teacher.parameters(),
                                                 teacher.teacher.parameters(), strict=True))


def test_no_student_trains_on_the_validation_images(digits):
    _, clean = run(CONFIG, digits)
    held = validation_indices(digits, CONFIG)
    x = digits.x_train.clone()
    x[held] = 1 - x[held]                         # validation images inverted
    _, dirty = run(CONFIG, dataclasses.replace(digits, x_train=x))
    for a, b in zip(clean, dirty, strict=True):
        assert {k: v for k, v in a.items() if not k.startswith("val_")} == \
            {k: v for k, v in b.items() if not k.startswith("val_")}
    assert clean[-1]["val_acc_teacher"] != dirty[-1]["val_acc_teacher"]


def test_without_a_validation_split_there_are_no_validation_students(digits):
    learner = Teacher({**CONFIG, "stream": {"dataset": "digits", "validation": 0}}, data=digits)
    metrics = learner.step_round()
    assert "loss_ratio_adam" in metrics and not any(k.startswith("val_") for k in metrics)
    with pytest.raises(ValueError, match="stream.validation is 0"):
        learner.meta_test("val")


def spec(metric: str, **search) -> dict:
    return {"learner": "teacher", "stream": {"dataset": "digits"},
            "search": {"metric": metric, "mode": "min", **search}}


def test_a_spec_selects_on_validation_students_unless_it_opts_into_test():
    with pytest.raises(ConfigError, match="select on 'val_loss_ratio_adam'"):
        spec_from_dict(spec("loss_ratio_adam"))
    assert spec_from_dict(spec("val_loss_ratio_adam")).search.metric == "val_loss_ratio_adam"
    assert spec_from_dict(spec("loss_ratio_adam", select_on_test=True)).search.select_on_test
    no_split = {**spec("val_loss_ratio_adam"), "stream": {"dataset": "digits", "validation": 0}}
    with pytest.raises(ConfigError, match="stream.validation is 0"):
        spec_from_dict(no_split)


def test_status_ranks_by_the_validation_students_with_the_test_ones_beside(tmp_path, digits):
    """A teacher sweep's store as the recording callback writes it, from real rounds."""
    uri = write_spec(tmp_path / "teach", "teach", learner="teacher",
                     stream={"dataset": "digits"}, config={},
                     search={"scheduler": "fifo", "metric": "val_loss_ratio_adam", "mode": "min"})
    store = ResultStore(uri, run=1)
    rows, trials = [], []
    for i, seed in enumerate((0, 1)):
        _, metrics = run({**CONFIG, "seed": seed}, digits)
        trials.append(trial_row("teach", f"t{i}", "teacher", seed, {}, iterations=len(metrics)))
        rows += [{"sweep": "teach", "trial_id": f"t{i}", "iteration": it, "time_s": 1.0,
                  "name": name, "value": value}
                 for it, m in enumerate(metrics, start=1) for name, value in m.items()]
    store.append("trials", trials)
    store.append("metrics", rows)
    table = sweep_status(uri)
    last = {(r["trial_id"], r["name"]): r["value"] for r in rows if r["iteration"] == 2}
    assert list(table.columns[4:6]) == ["val_loss_ratio_adam", "loss_ratio_adam"]
    for row in table.itertuples():
        assert row.val_loss_ratio_adam == last[row.trial_id, "val_loss_ratio_adam"]
        assert row.loss_ratio_adam == last[row.trial_id, "loss_ratio_adam"]
    assert table.val_loss_ratio_adam.is_monotonic_increasing            # ranked on validation
    text = status_text(uri)
    assert "ranked by val_loss_ratio_adam (min), loss_ratio_adam beside it" in text
    assert "selected on test data" not in text
