"""Task streams: configs, permutations, splits, and the scenario's label/output-unit convention."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from lifelab.errors import ConfigError
from lifelab.platform.data import Dataset, load_dataset
from lifelab.platform.episodes import EpisodeConfig
from lifelab.platform.streams import (
    SCENARIOS,
    STREAM_KINDS,
    StreamConfig,
    build_stream,
    stream_config,
)


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist5k").flat()   # float rows, to compare batches with directly


def stream(mnist: Dataset, **config):
    return build_stream(StreamConfig(**config), mnist)


def probe_dataset() -> Dataset:
    # Each pixel holds its column index / 783, so a permuted task's rows reveal its permutation.
    d = 784
    x = (torch.arange(d, dtype=torch.float32) / (d - 1)).repeat(6, 1)
    y = torch.arange(6) % 10
    return Dataset("mnist5k", x, y, x[:3].clone(), y[:3].clone(), (1, 28, 28), 10)


def permutations(tasks: int, seed: int) -> list[torch.Tensor]:
    """The permutation of each task, read back through the public API on the probe dataset."""
    s = build_stream(StreamConfig(tasks=tasks, seed=seed), probe_dataset())
    perms = []
    for task in s.tasks:
        x_train, _ = task.train_batch(torch.arange(6))
        x_test, _ = task.eval_set("test")
        perm = (x_train[0] * 783).round().long()
        # the same permutation on every training row and on the test set
        assert torch.equal(x_train, x_train[0].expand_as(x_train))
        assert torch.equal(x_test, x_train[:3])
        perms.append(perm)
    return perms


# ---------------------------------------------------------------- config


def test_from_dict_fills_defaults_and_round_trips() -> None:
    expect = StreamConfig(tasks=3, kind="split")
    assert StreamConfig.from_dict({"tasks": 3, "kind": "split"}) == expect
    config = StreamConfig(dataset="mnist", kind="split", tasks=4, scenario="class", seed=7)
    assert StreamConfig.from_dict(dataclasses.asdict(config)) == config
    assert StreamConfig.from_dict({}) == StreamConfig()


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"foo": 1}, "stream.foo"),
        ({"tasks": -3}, "stream.tasks"),
        ({"tasks": 0}, "stream.tasks"),
        ({"tasks": 101}, "stream.tasks"),
        ({"tasks": True}, "stream.tasks"),  # bool is not an int here
        ({"tasks": 2.0}, "stream.tasks"),
        ({"tasks": "5"}, "stream.tasks"),
        ({"steps_per_task": 0}, "stream.steps_per_task"),
        ({"steps_per_task": False}, "stream.steps_per_task"),
        ({"classes_per_task": 0}, "stream.classes_per_task"),
        ({"seed": -1}, "stream.seed"),
        ({"seed": True}, "stream.seed"),
        ({"kind": "shuffled"}, "stream.kind"),
        ({"scenario": "mixed"}, "stream.scenario"),
        ({"dataset": "svhn"}, "stream.dataset"),
        ({"dataset": None}, "stream.dataset"),
        ({"download": "yes"}, "stream.download"),
        ({"download": 1}, "stream.download"),
        ({"data_root": 3}, "stream.data_root"),
    ],
)
def test_bad_config_raises_config_error_naming_the_key(bad: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        StreamConfig.from_dict(bad)
    message = str(err.value)
    assert message.startswith(key + " ") and "\n" not in message


def test_error_messages_name_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"between 1 and 100, got -3$"):
        StreamConfig.from_dict({"tasks": -3})
    kind = r"^stream.kind 'shuffled' is unknown: use one of permuted, rotated, split$"
    with pytest.raises(ConfigError, match=kind):
        StreamConfig.from_dict({"kind": "shuffled"})
    with pytest.raises(ConfigError, match=r"^stream.foo is not a stream key: use one of dataset, "):
        StreamConfig.from_dict({"foo": 1})


def test_stream_config_gives_one_type_per_kind(mnist: Dataset) -> None:
    for kind in STREAM_KINDS:
        assert type(stream_config({"kind": kind})) is StreamConfig
    episodes = stream_config({"kind": "trial_and_error", "tries": 2})
    assert type(episodes) is EpisodeConfig and episodes.tries == 2
    # a task stream's own constructor refuses an episode kind, naming who asked
    with pytest.raises(ConfigError, match=r"^learner 'ewc' learns from a task stream, not "
                                          r"stream.kind trial_and_error: use one of permuted"):
        StreamConfig.from_dict({"kind": "trial_and_error"}, learner="ewc")
    # both kinds check themselves against the loaded dataset before any trial starts
    with pytest.raises(ConfigError, match="stream.classes_per_task"):
        stream_config({"kind": "split", "tasks": 6}).check_dataset(mnist)
    with pytest.raises(ConfigError, match="names label 10"):
        stream_config({"kind": "trial_and_error", "groups": [[9, 10]]}).check_dataset(mnist)
    stream_config({"kind": "split", "tasks": 5}).check_dataset(mnist)
    stream_config({"kind": "trial_and_error"}).check_dataset(mnist)


def test_non_mapping_config_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        StreamConfig.from_dict([("tasks", 3)])  # type: ignore[arg-type]


@pytest.mark.parametrize("tasks, k", [(6, 2), (4, 3), (11, 1)])
def test_split_with_more_classes_than_the_dataset_raises(
    mnist: Dataset, tasks: int, k: int
) -> None:
    with pytest.raises(ConfigError) as err:
        stream(mnist, kind="split", tasks=tasks, classes_per_task=k)
    assert "stream.tasks" in str(err.value) and "stream.classes_per_task" in str(err.value)


@pytest.mark.parametrize("tasks, k", [(5, 2), (3, 3), (10, 1), (1, 10)])
def test_split_that_fits_builds(mnist: Dataset, tasks: int, k: int) -> None:
    assert len(stream(mnist, kind="split", tasks=tasks, classes_per_task=k).tasks) == tasks


def test_dataset_must_match_the_config(mnist: Dataset) -> None:
    with pytest.raises(ValueError, match="fashion_mnist"):
        build_stream(StreamConfig(dataset="fashion_mnist"), mnist)


# ---------------------------------------------------------------- permuted


def test_permuted_shapes(mnist: Dataset) -> None:
    s = stream(mnist, tasks=3, validation=0)
    assert len(s.tasks) == 3 and s.input_dim == 784
    for t, task in enumerate(s.tasks):
        assert task.index == t and task.classes == tuple(range(10)) and task.num_train == 4000
        x, y = task.train_batch(torch.arange(32))
        assert x.shape == (32, 784) and x.dtype == torch.float32
        assert y.shape == (32,) and y.dtype == torch.int64
        x_test, y_test = task.eval_set("test")
        assert x_test.shape == (1000, 784) and y_test.shape == (1000,)


def test_permuted_task_0_is_the_identity(mnist: Dataset) -> None:
    task = stream(mnist, tasks=3, validation=0).tasks[0]
    idx = torch.tensor([5, 0, 3999])
    assert torch.equal(task.train_batch(idx)[0], mnist.x_train[idx])
    assert torch.equal(task.eval_set("test")[0], mnist.x_test)


def test_permutations_are_real_distinct_permutations() -> None:
    perms = permutations(tasks=4, seed=0)
    assert torch.equal(perms[0], torch.arange(784))
    for perm in perms[1:]:
        assert torch.equal(perm.sort().values, torch.arange(784))  # each pixel exactly once
        assert not torch.equal(perm, torch.arange(784))
    assert len({tuple(p.tolist()) for p in perms}) == 4


def test_permutations_are_fixed_by_the_seed() -> None:
    a, b, other = permutations(4, seed=0), permutations(4, seed=0), permutations(4, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert all(not torch.equal(p, q) for p, q in zip(a[1:], other[1:], strict=True))
    # a longer stream keeps the earlier tasks unchanged
    longer = permutations(6, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(a, longer[:4], strict=True))


def test_permuted_task_permutes_the_real_pixels_consistently(mnist: Dataset) -> None:
    perms = permutations(tasks=3, seed=5)
    s = stream(mnist, tasks=3, seed=5, validation=0)
    idx = torch.arange(0, 4000, 97)
    for task, perm in zip(s.tasks, perms, strict=True):
        x, y = task.train_batch(idx)
        assert torch.equal(x, mnist.x_train[idx][:, perm])
        assert torch.equal(x.sort(dim=1).values, mnist.x_train[idx].sort(dim=1).values)
        assert torch.equal(y, mnist.y_train[idx])  # task scenario: local label = digit
        assert torch.equal(task.eval_set("test")[0], mnist.x_test[:, perm])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_permuted_100_does_not_copy_the_dataset(mnist: Dataset) -> None:
    # One copy of mnist5k is 5000 * 784 * 4 B = 15.7 MB, so 100 copies would be ~1.5 GB.
    # The 99 permutations themselves are 99 * 784 * 8 B = 0.6 MB.
    before = _rss_bytes()
    s = stream(mnist, tasks=100)
    grown = _rss_bytes() - before
    assert len(s.tasks) == 100
    assert grown < 100e6, f"building PermutedMNIST-100 grew memory by {grown / 1e6:.0f} MB"
    x, _ = s.tasks[99].train_batch(torch.arange(8))
    assert x.shape == (8, 784)


# ---------------------------------------------------------------- split


def test_split_tasks_hold_only_and_all_their_classes(mnist: Dataset) -> None:
    # class: y is the original label
    s = stream(mnist, kind="split", tasks=5, scenario="class", validation=0)
    seen_train = 0
    for t, task in enumerate(s.tasks):
        assert task.classes == (2 * t, 2 * t + 1)
        _, y = task.train_batch(torch.arange(task.num_train))
        _, y_test = task.eval_set("test")
        assert set(y.unique().tolist()) == set(y_test.unique().tolist()) == {2 * t, 2 * t + 1}
        in_task = (mnist.y_train == 2 * t) | (mnist.y_train == 2 * t + 1)
        assert task.num_train == int(in_task.sum())  # no sample of these classes dropped
        seen_train += task.num_train
    assert seen_train == 4000


def test_split_task_pairs_images_with_their_labels(mnist: Dataset) -> None:
    task = stream(mnist, kind="split", tasks=5, scenario="class").tasks[3]
    x, y = task.eval_set("test")
    pairs = zip(mnist.x_test, mnist.y_test, strict=True)
    rows = {bytes(r.numpy()): int(label) for r, label in pairs}
    assert all(rows[bytes(r.numpy())] == int(label) for r, label in zip(x, y, strict=True))


# ---------------------------------------------------------------- scenarios


def _global_unit(kind: str, scenario: str, label: torch.Tensor, t: int, c: int) -> torch.Tensor:
    """The output unit a sample of dataset label `label` in task t must train (c units per task)."""
    local = label if kind != "split" else label - c * t
    if scenario == "domain":
        return local
    return c * t + local  # task: head t; class: global class (for split that is the label itself)


@pytest.mark.parametrize("kind", STREAM_KINDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_labels_fall_in_the_output_units(mnist: Dataset, kind: str, scenario: str) -> None:
    tasks, c = (3, 10) if kind != "split" else (5, 2)
    s = stream(mnist, kind=kind, tasks=tasks, scenario=scenario)
    assert s.num_outputs == (c if scenario == "domain" else c * tasks)
    for t, task in enumerate(s.tasks):
        x, y = task.eval_set("test")
        if kind != "split":
            original = mnist.y_test
        else:
            original = mnist.y_test[(mnist.y_test // c) == t]  # the task's samples, in order
        for seen in range(t + 1, tasks + 1):
            units = s.output_units(t, seen)
            assert 0 <= units.start < units.stop <= s.num_outputs
            assert 0 <= y.min() and y.max() < units.stop - units.start
            assert torch.equal(units.start + y, _global_unit(kind, scenario, original, t, c))
            if scenario == "class":
                assert units == slice(0, c * seen)  # every class seen so far competes
            # the learner's loss works as documented
            logits = torch.zeros(len(y), s.num_outputs)
            assert torch.isfinite(F.cross_entropy(logits[:, units], y))


def test_output_units_rejects_unseen_tasks(mnist: Dataset) -> None:
    s = stream(mnist, tasks=3)
    for task, seen in [(1, 1), (0, 0), (2, 4), (-1, 2)]:
        with pytest.raises(ValueError):
            s.output_units(task, seen)


def test_to_moves_every_tensor_and_keeps_batches(mnist: Dataset) -> None:
    s = stream(mnist, tasks=3, scenario="class")
    moved = s.to("meta")  # a device with no data: proves every tensor moved without needing a GPU
    assert moved.config == s.config and moved.num_outputs == s.num_outputs
    for task, original in zip(moved.tasks, s.tasks, strict=True):
        x, y = task.train_batch(torch.arange(4, device="meta"))
        assert x.device.type == y.device.type == "meta" and x.shape == (4, 784)
        assert task.eval_set("test")[0].device.type == "meta"
        assert original.eval_set("test")[0].device.type == "cpu"  # the original stream is untouched
    same = s.to("cpu")
    idx = torch.arange(10)
    assert torch.equal(same.tasks[2].train_batch(idx)[0], s.tasks[2].train_batch(idx)[0])
    assert torch.equal(same.tasks[2].train_batch(idx)[1], s.tasks[2].train_batch(idx)[1])


# ---------------------------------------------------------------- validation


def _rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(r.numpy()) for r in x}


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_validation_is_held_out_of_training_per_class_and_fixed_by_the_seed(mnist, kind):
    s = stream(mnist, kind=kind, tasks=5, scenario="class", validation=0.1, seed=3)
    for task in s.tasks:
        x, y = task.train_batch(torch.arange(task.num_train))
        x_val, y_val = task.eval_set("val")
        assert not _rows(x) & _rows(x_val)                   # never trained on
        for label in y.unique().tolist():                   # 10% of each class, rounded
            total = int((y == label).sum() + (y_val == label).sum())
            assert int((y_val == label).sum()) == round(0.1 * total)
        assert torch.equal(task.eval_set("test")[0], task.eval_set("test")[0])
    # train and validation together are exactly the dataset's training images
    whole = stream(mnist, kind=kind, tasks=5, scenario="class", validation=0, seed=3).tasks[0]
    task = s.tasks[0]
    both = torch.cat([task.train_batch(torch.arange(task.num_train))[0], task.eval_set("val")[0]])
    assert _rows(both) == _rows(whole.train_batch(torch.arange(whole.num_train))[0])
    again = stream(mnist, kind=kind, tasks=5, scenario="class", validation=0.1, seed=3)
    other = stream(mnist, kind=kind, tasks=5, scenario="class", validation=0.1, seed=4)
    assert torch.equal(again.tasks[0].eval_set("val")[0], task.eval_set("val")[0])
    assert not torch.equal(other.tasks[0].eval_set("val")[0], task.eval_set("val")[0])


@pytest.mark.parametrize("bad", [-0.1, 0.6, "0.1", True])
def test_validation_fraction_is_checked(bad):
    with pytest.raises(ConfigError, match="stream.validation must be a fraction"):
        StreamConfig(validation=bad)
