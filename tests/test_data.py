"""Datasets: the embedded MNIST-5k; torchvision's readers exercised offline on tiny IDX files.
(CIFAR and TinyImageNet, in their own formats: tests/test_images.py.)"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from lifelab.errors import DataError
from lifelab.platform import data
from lifelab.platform.data import DATASETS, load_dataset


def test_mnist5k_shapes_dtypes_and_ranges() -> None:
    ds = load_dataset("mnist5k")
    assert ds.name == "mnist5k"
    # images, as bytes: 4 times smaller than float32 in memory and in Ray's object store
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.uint8
    assert ds.y_train.shape == (4000,) and ds.y_test.shape == (1000,)
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert ds.input_shape == (1, 28, 28) and ds.input_dim == 784 and ds.num_classes == 10
    flat = ds.flat()
    assert flat.x_train.shape == (4000, 784) and flat.x_test.shape == (1000, 784)
    for x, raw in ((flat.x_train, ds.x_train), (flat.x_test, ds.x_test)):
        assert x.dtype == torch.float32 and x.min() == 0.0 and x.max() == 1.0
        # pixels are bytes / 255, not standardised or rescaled some other way
        assert torch.equal(x, raw.reshape(len(raw), -1).float() / 255)


def test_mnist5k_is_deterministic_across_reads() -> None:
    first = load_dataset("mnist5k")
    data._load_mnist5k.cache_clear()  # force a real second read of the file
    second = load_dataset("mnist5k")
    assert first is not second
    for a, b in [
        (first.x_train, second.x_train),
        (first.y_train, second.y_train),
        (first.x_test, second.x_test),
        (first.y_test, second.y_test),
    ]:
        assert torch.equal(a, b)
    assert load_dataset("mnist5k") is second  # cached in-process


def test_mnist5k_split_is_shuffled_and_balanced() -> None:
    # The file is sorted by label: an unshuffled 4000/1000 split would put only 8s and 9s in test.
    ds = load_dataset("mnist5k")
    train_counts = torch.bincount(ds.y_train, minlength=10)
    test_counts = torch.bincount(ds.y_test, minlength=10)
    assert len(train_counts) == len(test_counts) == 10
    assert train_counts.min() >= 300  # 400 expected per class
    assert test_counts.min() >= 60  # 100 expected per class
    # a train batch from the front of the set is mixed too (not label-sorted)
    assert len(torch.unique(ds.y_train[:100])) == 10


def test_mnist5k_train_and_test_do_not_overlap() -> None:
    ds = load_dataset("mnist5k")
    train_rows = {bytes(row.numpy()) for row in ds.x_train}
    test_rows = {bytes(row.numpy()) for row in ds.x_test}
    assert not train_rows & test_rows


def _write_idx(path: Path, array: torch.Tensor) -> None:
    # IDX format: magic 0x0000 0x08 (uint8) <ndim>, then big-endian dims, then the bytes.
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.numpy().tobytes())


def _write_mnist_like(root: Path, folder: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)

    def rand(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, dtype=torch.uint8, generator=gen)

    # the four files torchvision's MNIST._check_exists wants (uncompressed names)
    arrays = {
        "train-images-idx3-ubyte": rand(256, 20, 28, 28),
        "train-labels-idx1-ubyte": rand(10, 20),
        "t10k-images-idx3-ubyte": rand(256, 10, 28, 28),
        "t10k-labels-idx1-ubyte": rand(10, 10),
    }
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for name, array in arrays.items():
        _write_idx(raw / name, array)
    return arrays


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_like_loads_offline(tmp_path: Path, name: str, folder: str) -> None:
    written = _write_mnist_like(tmp_path, folder)
    ds = load_dataset(name, data_root=str(tmp_path))
    assert ds.name == name and ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.x_train, written["train-images-idx3-ubyte"].unsqueeze(1))
    assert torch.equal(ds.x_test, written["t10k-images-idx3-ubyte"].unsqueeze(1))
    expect_x_train = written["train-images-idx3-ubyte"].reshape(20, 784).float() / 255
    assert torch.equal(ds.flat().x_train, expect_x_train)
    assert torch.equal(ds.y_train, written["train-labels-idx1-ubyte"].long())
    assert torch.equal(ds.y_test, written["t10k-labels-idx1-ubyte"].long())


def test_data_root_defaults_to_lifelab_data_env(tmp_path: Path, monkeypatch) -> None:
    written = _write_mnist_like(tmp_path, "MNIST")
    monkeypatch.setenv("LIFELAB_DATA", str(tmp_path))
    ds = load_dataset("mnist")
    assert torch.equal(ds.y_test, written["t10k-labels-idx1-ubyte"].long())


@pytest.mark.parametrize(
    "name, folder",
    [
        ("mnist", "MNIST/raw"),
        ("fashion_mnist", "FashionMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
    ],
)
def test_missing_files_raise_data_error_naming_dataset_and_path(
    tmp_path: Path, name: str, folder: str
) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(name, data_root=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert repr(name) in message
    assert str(tmp_path / folder) in message
    assert "download: true" in message


def test_unknown_dataset_raises_data_error_listing_known_names() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("svhn")
    message = str(err.value)
    assert "'svhn'" in message
    assert all(name in message for name in DATASETS)
