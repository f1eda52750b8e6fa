"""Named datasets: where their files are looked for, how they are obtained.

Search order for a dataset's files: `--data-root`, then `$TUDUI_DATA`, then
`~/.cache/tudui/data`, then system folders (Debian's `dataset-fashion-mnist`
package installs /usr/share/datasets/fashion-mnist). Within each base folder
both a flat folder of the original files and torchvision's own layout
(`FashionMNIST/raw`, `cifar-10-batches-py`) are accepted.
"""
from __future__ import annotations

import functools
import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import TuduiError
from .split import Split, stratified_split

SYSTEM_DIRS = ["/usr/share/datasets", "/usr/local/share/datasets"]
CACHE_DIR = Path("~/.cache/tudui/data").expanduser()

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class NamedDataset:
    name: str
    subdirs: tuple[str, ...]  # folder names tried under each base folder
    files: tuple[str, ...]  # files that must all exist (without .gz) for a folder to match
    tv_class: str | None  # torchvision.datasets class used by --download
    hflip: bool  # horizontal flips keep the label (not for digits)
    how_to_get: str


NAMED = {
    "fashion-mnist": NamedDataset(
        "fashion-mnist", ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"),
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        "FashionMNIST", True, "on Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist`"),
    "mnist": NamedDataset(
        "mnist", ("mnist", "MNIST/raw"),
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        "MNIST", False, "copy the four IDX files (optionally .gz) into a folder named mnist"),
    "cifar10": NamedDataset(
        "cifar10", ("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"),
        ("data_batch_1", "test_batch", "batches.meta"), "CIFAR10", True,
        "unpack cifar-10-python.tar.gz so that cifar-10-batches-py/ is inside the data root"),
    "cifar100": NamedDataset(
        "cifar100", ("cifar-100-python", "cifar100/cifar-100-python", "cifar100"),
        ("train", "test", "meta"), "CIFAR100", True,
        "unpack cifar-100-python.tar.gz so that cifar-100-python/ is inside the data root"),
    "digits": NamedDataset("digits", (), (), None, False, "bundled with scikit-learn"),
}


def search_dirs(data_root: str | None) -> list[Path]:
    bases = [data_root, os.environ.get("TUDUI_DATA"), str(CACHE_DIR), *SYSTEM_DIRS]
    return [Path(b).expanduser() for b in bases if b]


def _exists(folder: Path, name: str) -> bool:
    return (folder / name).is_file() or (folder / (name + ".gz")).is_file()


def find(name: str, data_root: str | None = None) -> Path | None:
    """The folder holding `name`'s files, or None."""
    ds = NAMED[name]
    for base in search_dirs(data_root):
        for sub in ds.subdirs:
            folder = (base / sub).resolve()
            if folder.is_dir() and all(_exists(folder, f) for f in ds.files):
                return folder
    return None


def _read_idx(folder: Path, name: str) -> np.ndarray:
    """An IDX file (the MNIST format; gzipped or not) as a read-only numpy array, read once per process while the
    file stays as it is (see _decoded)."""
    path = folder / name
    path = path if path.is_file() else folder / (name + ".gz")
    stat = path.stat()
    return _decoded(str(path), stat.st_size, stat.st_mtime_ns)


# Why a cache: a process that trains more than once on a named dataset (a notebook's cells, `tudui tune`'s trials in
# one process, a benchmark's runs) read and copied the same 47 MB of Fashion-MNIST, or decompressed it (Debian's
# files are gzipped: ~0.3 s), each time. Keyed by the file's size and modification time, so a file replaced on disk
# is read again; the arrays are read-only (np.frombuffer of bytes), so no caller can change what the next one gets.
# Four entries: a dataset's two splits, images and labels.
@functools.lru_cache(maxsize=4)
def _decoded(path_str: str, size: int, mtime_ns: int) -> np.ndarray:
    path = Path(path_str)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise TuduiError(f"{path} is truncated ({data.size} values, header says {int(np.prod(dims))}); "
                         "delete it and obtain the dataset again")
    return data.reshape(dims)


def _load_idx(folder: Path, train: bool, classes: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    prefix = "train" if train else "t10k"
    images = _read_idx(folder, f"{prefix}-images-idx3-ubyte")[..., None]  # (N, 28, 28, 1)
    labels = _read_idx(folder, f"{prefix}-labels-idx1-ubyte").astype(np.int64)
    return images, labels, classes


def _unpickle(path: Path) -> dict:
    # CIFAR's own distribution format is a pickle of plain arrays and lists.
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _load_cifar10(folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    batches = [_unpickle(folder / n) for n in names]
    images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([b["labels"] for b in batches]).astype(np.int64)
    return np.ascontiguousarray(images), labels, list(_unpickle(folder / "batches.meta")["label_names"])


def _load_cifar100(folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    d = _unpickle(folder / ("train" if train else "test"))
    images = d["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(d["fine_labels"], np.int64), list(_unpickle(folder / "meta")["fine_label_names"])


@functools.lru_cache(maxsize=1)  # parsing the CSV is ~0.06 s, and a run reads it for each split: once per process
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (1797, 8, 8) float64 pixels 0-16 and (1797,) int64 labels, as its load_digits returns,
    read-only (they are shared by every later call).

    Read from the file scikit-learn ships (datasets/data/digits.csv.gz: 64 pixels and the label per row), found
    without importing scikit-learn: `import sklearn` costs ~1.7 s of CPU (scipy, pandas), 30x the ~0.06 s the file
    takes, in every process that trains on digits (each rank of a torchrun job). Where the file is not there (another
    layout in a later scikit-learn), load_digits reads it."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package; runs none of it
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((p for p in (Path(f, "datasets", "data", "digits.csv.gz") for f in folders) if p.is_file()), None)
    if path is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        pixels, labels = d.images, d.target.astype(np.int64)
    else:
        rows = np.loadtxt(path, delimiter=",")  # (1797, 65)
        pixels, labels = rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


def _load_digits(train: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    pixels, labels = _digits_arrays()
    images = np.clip(pixels / 16.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    # scikit-learn ships no test split: a fixed, stratified 20% is the test set.
    keep, held = stratified_split(labels, 0.2, seed=1797)
    index = keep if train else held
    return images[index], labels[index], [str(i) for i in range(10)]


LOADERS: dict[str, Callable[[Path, bool], tuple[np.ndarray, np.ndarray, list[str]]]] = {
    "fashion-mnist": lambda f, train: _load_idx(f, train, FASHION_CLASSES),
    "mnist": lambda f, train: _load_idx(f, train, [str(i) for i in range(10)]),
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
}


def _download(name: str, data_root: str | None) -> Path:
    import torchvision.datasets as tvd

    ds = NAMED[name]
    root = Path(data_root or os.environ.get("TUDUI_DATA") or CACHE_DIR).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):
            getattr(tvd, ds.tv_class)(root=str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types
        raise TuduiError(f"downloading {name} into {root} failed: {e}. {_how_to_get(name, data_root)}") from e
    folder = find(name, str(root))
    if folder is None:
        raise TuduiError(f"downloaded {name} into {root} but its files were not found there")
    return folder


def _how_to_get(name: str, data_root: str | None) -> str:
    dirs = ", ".join(str(d) for d in search_dirs(data_root))
    return (f"Looked in: {dirs}. To get it: {NAMED[name].how_to_get}; or put the files under --data-root or "
            f"$TUDUI_DATA; or add --download where there is a network.")


def load_named(name: str, train: bool, data_root: str | None = None, download: bool = False) -> Split:
    """The train (train=True) or test split of a named dataset, decoded."""
    if name == "digits":
        images, labels, classes = _load_digits(train)
        return Split(classes, labels, images=images, origin="digits")
    folder = find(name, data_root)
    if folder is None:
        if not download:
            raise TuduiError(f"dataset {name} not found. {_how_to_get(name, data_root)}")
        folder = _download(name, data_root)
    images, labels, classes = LOADERS[name](folder, train)
    return Split(classes, labels, images=images, origin=str(folder))


def where(name: str, data_root: str | None = None) -> str:
    """Where `name` was found, or how to get it (for `tudui info`)."""
    if name == "digits":
        return "bundled with scikit-learn"
    folder = find(name, data_root)
    return str(folder) if folder else "not found: " + NAMED[name].how_to_get
