"""The image datasets lifelab reads from disk, each in its official on-disk format.

- mnist, fashion_mnist: torchvision's readers of the IDX files (`download: true` fetches them).
- cifar10, cifar100: the "python version" batches, read here rather than by torchvision, whose
  readers check the MD5 of every batch file and so refuse anything but the official bytes (a
  test's small files, a re-packed copy). `download: true` lets torchvision fetch and verify the
  official archive once; reading is ours.
- tinyimagenet: the folder tiny-imagenet-200 as unzipped from the official archive
  (wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG + val/val_annotations.txt). Never
  downloaded. Classes are the wnids sorted (torchvision's ImageFolder order); the labelled
  validation images are the test split (the official test images have no labels).

Every reader returns uint8 images (N, C, H, W) and int64 labels.
"""

from __future__ import annotations

import io
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lifelab.errors import DataError

#: what a reader returns, for lifelab.platform.data to wrap in a Dataset (which imports this
#: module lazily): x_train, y_train, x_test, y_test, input shape, number of classes
Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...], int]

# name -> (torchvision class, folder under the root, classes)
_MNIST_LIKE = {"mnist": ("MNIST", "MNIST/raw", 10), "fashion_mnist": ("FashionMNIST",
                                                                      "FashionMNIST/raw", 10)}
# name -> (torchvision class, folder, train files, test files, label key, classes, archive)
_CIFAR = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                ["test_batch"], "labels", 10,
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train"], ["test"], "fine_labels", 100,
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}
TINY_FOLDER = "tiny-imagenet-200"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def read(name: str, root: Path, download: bool) -> Splits:
    if name in _MNIST_LIKE:
        return _read_mnist_like(name, root, download)
    if name in _CIFAR:
        return _read_cifar(name, root, download)
    return _read_tinyimagenet(root, download)


def _missing(name: str, root: Path, folder: str, download: bool, error: Exception | None,
             source: str) -> DataError:
    if download and error is not None:
        reason = " ".join(str(error).split())  # keep the message on one line
        how = f"download failed ({reason}): check the internet connection"
    else:
        how = "set download: true in the stream config (needs internet)"
    return DataError(f"dataset {name!r} not found under {root}: {how} or put the files at "
                     f"{root / folder} ({source})")


def _read_mnist_like(name: str, root: Path, download: bool) -> Splits:
    import torchvision.datasets

    cls_name, folder, classes = _MNIST_LIKE[name]
    splits = []
    for train in (True, False):
        try:
            ds = getattr(torchvision.datasets, cls_name)(str(root), train=train,
                                                         download=download)
        except RuntimeError as e:  # torchvision: "Dataset not found..." / "Error downloading..."
            raise _missing(name, root, folder, download, e, "the four IDX files") from e
        splits += [torch.as_tensor(ds.data).unsqueeze(1),          # (N, 1, 28, 28) uint8
                   torch.as_tensor(ds.targets, dtype=torch.int64)]
    return (*splits, (1, 28, 28), classes)


# -- CIFAR ---------------------------------------------------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batches and nothing else: plain containers and numpy arrays.

    A pickle can name any importable callable and have it called, so loading one from a
    user-writable folder would run whatever code its author chose. CIFAR's batches only need
    numpy's array reconstruction (plus `_codecs.encode`, which Python 3's protocol-2 pickles use
    for bytes); every other global is refused, so a tampered file fails to load instead of
    executing anything."""

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray",
                                                 "numpy._core.multiarray"):
            return _reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds "
                                     "only numpy arrays, lists and bytes")


def _reconstruct():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r} in a CIFAR batch")
    return text.encode("latin1")


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch file -> images (N, 3, 32, 32) uint8, labels (N,) int64."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        reason = " ".join(str(e).split())
        raise DataError(f"{path} is not a CIFAR batch ({reason}): replace the file") from e
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR batch (a pickled dict): replace the file")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get(label_key)
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3072 or labels is None or len(labels) != len(data)):
        raise DataError(f"{path} is not a CIFAR batch (uint8 'data' of 3072 columns and "
                        f"'{label_key}' per row): replace the file")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _read_cifar(name: str, root: Path, download: bool) -> Splits:
    cls_name, folder, train_files, test_files, label_key, classes, url = _CIFAR[name]
    base = root / folder
    source = f"the python batches of {url}, unpacked"
    if not all((base / f).is_file() for f in train_files + test_files):
        if not download:
            raise _missing(name, root, folder, download, None, source)
        import torchvision.datasets

        try:  # torchvision fetches the archive and checks its MD5; we only read the files
            getattr(torchvision.datasets, cls_name)(str(root), train=True, download=True)
        except (RuntimeError, OSError) as e:
            raise _missing(name, root, folder, download, e, source) from e
    splits = []
    for files in (train_files, test_files):
        parts = [read_cifar_batch(base / f, label_key) for f in files]
        splits += [torch.from_numpy(np.concatenate([x for x, _ in parts])),
                   torch.from_numpy(np.concatenate([y for _, y in parts]))]
    if int(splits[1].max()) >= classes or int(splits[1].min()) < 0:
        raise DataError(f"{base}: labels must lie in 0..{classes - 1}: replace the files")
    return (*splits, (3, 32, 32), classes)


# -- TinyImageNet --------------------------------------------------------------------------------

def _read_tinyimagenet(root: Path, download: bool) -> Splits:
    base = root / TINY_FOLDER
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        never = "lifelab never downloads it (download: true does not apply): " if download else ""
        raise DataError(f"dataset 'tinyimagenet' not found: looked for {wnids_file}; {never}"
                        f"download {TINY_URL} and unzip it in {root}")
    wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines()
                    if line.strip()})
    label = {wnid: i for i, wnid in enumerate(wnids)}
    train = [(path, label[wnid]) for wnid in wnids
             for path in sorted((base / "train" / wnid / "images").glob("*.JPEG"))]
    test = []
    annotations = base / "val" / "val_annotations.txt"
    if annotations.is_file():
        for line in annotations.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) >= 2 and fields[1] in label:
                test.append((base / "val" / "images" / fields[0], label[fields[1]]))
    if not train or not test:
        raise DataError(f"dataset 'tinyimagenet' under {base} has {len(train)} training and "
                        f"{len(test)} validation images: unzip {TINY_URL} there again")
    x_train, x_test = _decode([p for p, _ in train]), _decode([p for p, _ in test])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"dataset 'tinyimagenet' under {base}: training images are "
                        f"{tuple(x_train.shape[2:])} but validation images "
                        f"{tuple(x_test.shape[2:])}: unzip {TINY_URL} there again")
    return (x_train, torch.tensor([y for _, y in train]), x_test,
            torch.tensor([y for _, y in test]), tuple(x_train.shape[1:]), len(wnids))


def _decode(paths: list[Path]) -> torch.Tensor:
    """JPEGs of one size -> uint8 (N, 3, H, W). PIL releases the GIL while decoding, so threads
    shorten the ~110k decodes of the full dataset."""
    from PIL import Image

    def one(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))   # a few images are greyscale
        except OSError as e:
            raise DataError(f"cannot read image {path} ({e}): replace it") from e

    with ThreadPoolExecutor(max_workers=4) as pool:
        images = list(pool.map(one, paths))
    sizes = {im.shape for im in images}
    if len(sizes) != 1:
        raise DataError(f"images under {paths[0].parent.parent} differ in size ({sorted(sizes)}"
                        "): TinyImageNet's are all 64x64x3")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
