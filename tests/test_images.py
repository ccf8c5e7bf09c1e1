"""Image benchmarks offline: CIFAR and TinyImageNet written in their real on-disk formats and read
through the code users run; rotated / split streams with class orders; batched augmentation."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lifelab.errors import ConfigError, DataError
from lifelab.platform import readers, transforms
from lifelab.platform.data import NORMALIZATION, Dataset, load_dataset
from lifelab.platform.streams import StreamConfig, build_stream, class_order
from lifelab.searches.spec import load_spec

# -- writers of the official formats -------------------------------------------------------------


def write_cifar(root: Path, name: str, per_class: int = 3, test_per_class: int = 1,
                seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR's python batches: pickled dicts (protocol 2, bytes keys) of uint8 rows of 3072
    (1024 red, 1024 green, 1024 blue, each row-major 32x32) and a label list."""
    rng = np.random.default_rng(seed)
    classes = 10 if name == "cifar10" else 100
    folder, key = (("cifar-10-batches-py", b"labels") if name == "cifar10"
                   else ("cifar-100-python", b"fine_labels"))
    out = {}
    for split, n in (("train", per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(classes), n)
        rng.shuffle(labels)
        out[f"x_{split}"] = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        out[f"y_{split}"] = labels
    base = root / folder
    base.mkdir(parents=True)
    if name == "cifar10":
        files = [(f"data_batch_{i + 1}", part, "train")
                 for i, part in enumerate(np.array_split(np.arange(len(out["y_train"])), 5))]
        files.append(("test_batch", np.arange(len(out["y_test"])), "test"))
    else:
        files = [("train", np.arange(len(out["y_train"])), "train"),
                 ("test", np.arange(len(out["y_test"])), "test")]
    for file, rows, split in files:
        batch = {b"batch_label": file.encode(), key: out[f"y_{split}"][rows].tolist(),
                 b"data": out[f"x_{split}"][rows], b"filenames": [b"img.png"] * len(rows)}
        if name == "cifar100":
            batch[b"coarse_labels"] = (out[f"y_{split}"][rows] // 5).tolist()
        (base / file).write_bytes(pickle.dumps(batch, protocol=2))
    return out


def write_tinyimagenet(root: Path, wnids: list[str], train_per_class: int = 2,
                       val_per_class: int = 1, size: int = 64) -> None:
    """tiny-imagenet-200 as unzipped: wnids.txt, train/<wnid>/images/<wnid>_<i>.JPEG,
    val/images/val_<i>.JPEG and val/val_annotations.txt (file, wnid, box)."""
    base = root / readers.TINY_FOLDER
    rng = np.random.default_rng(0)
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    annotations, v = [], 0
    for k, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(train_per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            mode = "L" if (k + i) % 5 == 4 else "RGB"       # the real set has greyscale ones
            image = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)
            image.save(folder / f"{wnid}_{i}.JPEG")
        for _ in range(val_per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "val" / "images" / f"val_{v}.JPEG")
            annotations.append(f"val_{v}.JPEG\t{wnid}\t0\t0\t{size - 1}\t{size - 1}")
            v += 1
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")


def _decoded(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def images(name: str, n: int, classes: int, shape=(3, 32, 32), seed: int = 0) -> Dataset:
    """An in-memory dataset under a built-in name (streams apply that name's normalisation
    and augmentation), uint8 like the real one; every class present."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % classes
    return Dataset(name, x, y, x[: n // 2].clone(), y[: n // 2].clone(), shape, classes)


# -- CIFAR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_python_batches_load_channels_first(tmp_path, name, classes):
    written = write_cifar(tmp_path, name)
    ds = load_dataset(name, data_root=str(tmp_path))
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == classes
    assert ds.x_train.shape == (3 * classes, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert ds.y_train.dtype == torch.int64
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert torch.equal(y, torch.from_numpy(written[f"y_{split}"]))
        rows = torch.from_numpy(written[f"x_{split}"])
        assert torch.equal(x[:, 0], rows[:, :1024].reshape(-1, 32, 32))        # red plane
        assert torch.equal(x[:, 2], rows[:, 2048:].reshape(-1, 32, 32))        # blue plane


class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):          # unpickling would call open(marker, "w"): creates a file
        return open, (str(self.marker), "w")


def test_cifar_reader_refuses_pickles_that_call_anything_but_numpy(tmp_path):
    write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": _Planted(marker), b"labels": []}, protocol=2))
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", data_root=str(tmp_path))
    assert "refusing to load io.open" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


# -- TinyImageNet --------------------------------------------------------------------------------


def test_tinyimagenet_reads_the_official_folder_layout(tmp_path):
    wnids = ["n03444034", "n01443537", "n02124075"]          # wnids.txt is not sorted
    write_tinyimagenet(tmp_path, wnids, train_per_class=2, val_per_class=2)
    ds = load_dataset("tinyimagenet", data_root=str(tmp_path))
    assert ds.input_shape == (3, 64, 64) and ds.num_classes == 3
    assert ds.x_train.shape == (6, 3, 64, 64) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (6, 3, 64, 64)
    base = tmp_path / readers.TINY_FOLDER
    for label, wnid in enumerate(sorted(wnids)):              # classes: the sorted wnids
        first = base / "train" / wnid / "images" / f"{wnid}_0.JPEG"
        assert torch.equal(ds.x_train[2 * label], _decoded(first))
        assert ds.y_train[2 * label] == label
    annotations = (base / "val" / "val_annotations.txt").read_text().splitlines()
    for i, line in enumerate(annotations):
        file, wnid = line.split("\t")[:2]
        assert ds.y_test[i] == sorted(wnids).index(wnid)
        assert torch.equal(ds.x_test[i], _decoded(base / "val" / "images" / file))


@pytest.mark.parametrize("download", [False, True])
def test_missing_tinyimagenet_is_one_line_naming_the_path_and_the_archive(tmp_path, download):
    with pytest.raises(DataError) as err:
        load_dataset("tinyimagenet", data_root=str(tmp_path), download=download)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "tiny-imagenet-200" / "wnids.txt") in message
    assert readers.TINY_URL in message and f"unzip it in {tmp_path}" in message
    assert ("never downloads" in message) == download


def test_seq_tinyimagenet_10x20_from_disk(tmp_path):
    wnids = [f"n{i:08d}" for i in range(200)]
    write_tinyimagenet(tmp_path, wnids, train_per_class=1, val_per_class=1, size=8)
    data = load_dataset("tinyimagenet", data_root=str(tmp_path))
    config = StreamConfig(dataset="tinyimagenet", kind="split", tasks=10, classes_per_task=20,
                          scenario="class", validation=0)
    s = build_stream(config, data)
    assert s.num_outputs == 200 and s.input_shape == (3, 8, 8)
    for t, task in enumerate(s.tasks):
        assert task.classes == tuple(range(20 * t, 20 * t + 20)) and task.num_train == 20
        _, y = task.train_batch(torch.arange(20))
        assert sorted(y.tolist()) == list(range(20 * t, 20 * t + 20))


# -- split streams: class orders -----------------------------------------------------------------


@pytest.mark.parametrize("tasks, k", [(5, 2)])
def test_seq_cifar10_takes_classes_in_natural_order(tmp_path, tasks, k):
    write_cifar(tmp_path, "cifar10")
    data = load_dataset("cifar10", data_root=str(tmp_path))
    s = build_stream(StreamConfig(dataset="cifar10", kind="split", tasks=tasks,
                                  classes_per_task=k, scenario="class", validation=0), data)
    assert [task.classes for task in s.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert s.num_outputs == 10


@pytest.mark.parametrize("tasks, k", [(10, 10), (20, 5)])
def test_split_cifar100_seeded_class_order(tmp_path, tasks, k):
    write_cifar(tmp_path, "cifar100", per_class=1)
    data = load_dataset("cifar100", data_root=str(tmp_path))

    def make(seed, scenario="class"):
        return build_stream(StreamConfig(dataset="cifar100", kind="split", tasks=tasks,
                                         classes_per_task=k, scenario=scenario, seed=seed,
                                         class_order="seeded", validation=0), data)

    s = make(1993)
    order = [c for task in s.tasks for c in task.classes]
    assert sorted(order) == list(range(100)) and order != list(range(100))
    assert order == class_order(s.config, 100)                    # drawn from the seed ...
    assert order == [c for task in make(1993).tasks for c in task.classes]    # ... reproducibly
    assert order != [c for task in make(0).tasks for c in task.classes]
    in_task = make(1993, "task")
    for t, (task, local) in enumerate(zip(s.tasks, in_task.tasks, strict=True)):
        x, y = task.train_batch(torch.arange(task.num_train))
        original = data.y_train[torch.isin(data.y_train, torch.tensor(task.classes))]
        # class scenario: a class's label is its position in the order; task: in the task
        assert torch.equal(y, torch.tensor([order.index(int(c)) for c in original]))
        assert torch.equal(local.train_batch(torch.arange(task.num_train))[1], y - k * t)
        assert s.output_units(t, t + 1) == slice(0, k * (t + 1))


# -- rotated streams -----------------------------------------------------------------------------


def test_rotated_angles_seeded_per_bin_or_evenly_spaced():
    data = images("mnist5k", 20, 10, (1, 28, 28))
    seeded = build_stream(StreamConfig(kind="rotated", tasks=20, seed=3), data)
    angles = [task.angle for task in seeded.tasks]
    assert all(t * 9 <= a < (t + 1) * 9 for t, a in enumerate(angles))       # GEM: one per bin
    again = build_stream(StreamConfig(kind="rotated", tasks=20, seed=3), data)
    assert angles == [task.angle for task in again.tasks]
    other = build_stream(StreamConfig(kind="rotated", tasks=20, seed=4), data)
    assert angles != [task.angle for task in other.tasks]
    even = build_stream(StreamConfig(kind="rotated", tasks=4, angles="even"), data)
    assert [task.angle for task in even.tasks] == [0.0, 45.0, 90.0, 135.0]


def test_rotated_task_rotates_every_image_anticlockwise_like_pil():
    data = images("mnist5k", 12, 10, (1, 28, 28))
    s = build_stream(StreamConfig(kind="rotated", tasks=4, angles="even", validation=0), data)
    x0 = data.x_train.float() / 255
    idx = torch.arange(12)
    assert torch.equal(s.tasks[0].train_batch(idx)[0], x0.reshape(12, -1))     # 0: unrotated
    quarter = torch.rot90(x0, 1, (2, 3)).reshape(12, -1)                      # 90: exact
    assert torch.equal(s.tasks[2].train_batch(idx)[0], quarter)
    assert torch.equal(s.tasks[2].eval_set("test")[0], torch.rot90(
        data.x_test.float() / 255, 1, (2, 3)).reshape(6, -1))
    pil = Image.fromarray(data.x_train[5, 0].numpy(), "L").rotate(45)        # GEM's rotation
    got = s.tasks[1].train_batch(torch.tensor([5]))[0].reshape(28, 28)
    assert torch.equal((got * 255).round().to(torch.uint8), torch.from_numpy(np.array(pil)))
    assert torch.equal(s.tasks[3].train_batch(idx)[1], data.y_train)        # labels untouched


def test_rotated_needs_images():
    flat = Dataset("mnist5k", torch.rand(4, 784), torch.arange(4), torch.rand(2, 784),
                   torch.arange(2), (784,), 10)
    with pytest.raises(ConfigError, match="stream.kind rotated needs images"):
        build_stream(StreamConfig(kind="rotated", tasks=2), flat)


# -- augmentation and normalisation --------------------------------------------------------------


def test_crop_flip_shape_values_and_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g)
    offsets, flips = transforms.draw_crop_flip(16, torch.Generator().manual_seed(1))
    out = transforms.crop_flip(x, offsets, flips)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert 0 <= out.min() and out.max() <= 1                       # zero padding, no rescaling
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):                                             # torchvision's, by hand
        r, c = offsets[i].tolist()
        want = padded[i, :, r:r + 32, c:c + 32]
        assert torch.equal(out[i], want.flip(-1) if flips[i] else want)
    assert 0 < flips.float().mean() < 1 and len({tuple(o) for o in offsets.tolist()}) > 8


def test_cifar_training_batches_are_augmented_from_the_generator_and_normalised():
    data = images("cifar10", 40, 10)
    s = build_stream(StreamConfig(dataset="cifar10", kind="split", tasks=5, validation=0), data)
    task, idx = s.tasks[1], torch.arange(8)
    mean, std = (torch.tensor(v).reshape(3, 1, 1) for v in NORMALIZATION["cifar10"])
    raw = task._x_train[idx].float() / 255

    def batch(seed):
        return task.train_batch(idx, torch.Generator().manual_seed(seed))[0]

    plain, _ = task.train_batch(idx)                                 # no generator: as stored
    assert torch.allclose(plain, ((raw - mean) / std).reshape(8, -1))
    assert torch.equal(batch(0), batch(0)) and not torch.equal(batch(0), batch(1))
    assert not torch.equal(batch(0), plain) and batch(0).shape == (8, 3072)
    offsets, flips = transforms.draw_crop_flip(8, torch.Generator().manual_seed(0))
    want = (transforms.crop_flip(raw, offsets, flips) - mean) / std
    assert torch.allclose(batch(0), want.reshape(8, -1))
    x_test, _ = task.eval_set("test")                                       # evaluation: never
    assert torch.allclose(x_test.reshape(-1, 3, 32, 32) * std + mean,
                          task._x_test.float() / 255, atol=1e-6)


def test_digits_are_not_augmented_and_augment_can_be_forced_or_refused():
    data = images("mnist5k", 20, 10, (1, 28, 28))
    s = build_stream(StreamConfig(kind="split", tasks=5), data)
    idx = torch.arange(3)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(s.tasks[0].train_batch(idx, gen)[0], s.tasks[0].train_batch(idx)[0])
    assert gen.initial_seed() == 0 and torch.equal(gen.get_state(),
                                                   torch.Generator().manual_seed(0).get_state())
    forced = build_stream(StreamConfig(kind="split", tasks=5, augment="crop_flip"), data)
    assert not torch.equal(forced.tasks[0].train_batch(idx, gen)[0],
                           forced.tasks[0].train_batch(idx)[0])
    flat = Dataset("mnist5k", torch.rand(4, 784), torch.arange(4), torch.rand(2, 784),
                   torch.arange(2), (784,), 10)
    with pytest.raises(ConfigError, match="stream.augment crop_flip needs images"):
        build_stream(StreamConfig(augment="crop_flip"), flat)


def test_epochs_per_task_sets_the_steps_from_the_task_size():
    data = images("cifar10", 100, 10)
    s = build_stream(StreamConfig(dataset="cifar10", kind="split", tasks=5, validation=0.1,
                                  epochs_per_task=3), data)
    per_task = sum(t.num_train for t in s.tasks) / 5
    assert per_task == 18 and s.steps_per_task(32) == math.ceil(3 * 18 / 32)
    assert build_stream(StreamConfig(dataset="cifar10", steps_per_task=7), data
                        ).steps_per_task(32) == 7
    with pytest.raises(ConfigError, match="stream.epochs_per_task"):
        StreamConfig(epochs_per_task=-1)


def test_a_researchers_dataset_may_give_images_or_rows(tmp_path, monkeypatch):
    module = tmp_path / "my_images.py"
    module.write_text(
        "import torch\nfrom lifelab.platform.data import Dataset\n"
        "def as_bytes():\n"
        "    x = torch.zeros(6, 3, 4, 4, dtype=torch.uint8)\n"
        "    return Dataset('x', x, torch.arange(6) % 2, x, torch.arange(6) % 2, (3, 4, 4), 2)\n"
        "def as_rows():\n"
        "    x = torch.zeros(6, 48)\n"
        "    return Dataset('x', x, torch.arange(6) % 2, x, torch.arange(6) % 2, (3, 4, 4), 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("my_images:as_bytes", "my_images:as_rows"):
        ds = load_dataset(name)
        assert ds.name == name and ds.x_train.shape == (6, 3, 4, 4)
        assert ds.flat().x_train.shape == (6, 48) and ds.flat().x_train.dtype == torch.float32


@pytest.mark.parametrize("preset, dataset", [
    ("seq-cifar10", "cifar10"), ("split-cifar100", "cifar100"),
    ("seq-cifar10-cpu", "cifar10"), ("split-cifar100-cpu", "cifar100")])
def test_image_presets_validate_without_their_data(preset, dataset):
    spec = load_spec(preset)
    assert spec.stream["dataset"] == dataset and spec.config["backbone"] == "resnet18"
    assert spec.search.metric == "val_acc_avg"
    assert {"finetune", "ewc", "online_ewc", "si", "mas"} <= set(spec.learner_names())
