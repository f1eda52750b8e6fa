"""Your own Dataset: `tudui.train(data=MyData(...))`, `data=ants + bees`, `data={"train": ..., "val": ...}`, or
`--data path/to/file.py:name` (a module-level Dataset, list, dict, or a function of no arguments returning one).

The course's `MyData.__getitem__` returns `(PIL image, "ants")`. tudui accepts as the image a PIL image, an
HxW or HxWxC array, or a CxHxW tensor (uint8 0..255, or float 0..1 as ToTensor gives), and as the label an int
or a str; string labels become the class names, sorted as ImageFolder sorts them (unless `classes=` is given).
Each item becomes a lazy reference (`DatasetItem`) in a Split, so a user Dataset then goes the way a folder of
files goes: decoded once into uint8 memory when it fits, read through a DataLoader when it does not.
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import TuduiError
from .labels import LabelReading, labelled_split, nfc
from .split import Split

SPLITS = ("train", "val", "test")


def is_dataset(obj: Any) -> bool:
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not isinstance(obj, (str, bytes, dict))


def _label_of(item: Any, i: int, origin: str) -> int | str:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TuduiError(f"item {i} of {origin} is a {type(item).__name__}; a Dataset for tudui returns "
                         "(image, label) pairs, as the course's MyData does")
    label = item[1]
    if hasattr(label, "item") and getattr(label, "ndim", 1) == 0:  # 0-d tensor or numpy scalar
        label = label.item()
    if isinstance(label, (list, tuple)) and all(isinstance(n, str) for n in label):
        return [nfc(n) for n in label]  # several class names (multi-label)
    if hasattr(label, "detach"):  # a tensor: (K,) multi-hot
        label = label.detach().cpu().numpy()
    if isinstance(label, (list, tuple, np.ndarray)):
        hot = np.asarray(label)
        if hot.ndim == 1 and hot.dtype.kind in "biuf" and np.isin(hot, (0, 1)).all():
            return hot.astype(np.float32)  # a multi-hot vector
    if isinstance(label, (bool, float)) or not isinstance(label, (int, np.integer, str)):
        raise TuduiError(f"item {i} of {origin} has the label {label!r} ({type(label).__name__}); labels must be a "
                         "class index (int), a class name (str), a list of class names or a multi-hot vector of "
                         "0/1 (several labels per image)")
    return int(label) if not isinstance(label, str) else label


def to_pil(image: Any, where: str) -> Image.Image:
    """A Dataset item's image as a PIL image (uint8), whatever form the Dataset returns it in."""
    if isinstance(image, Image.Image):
        return image
    if hasattr(image, "detach") and hasattr(image, "numpy"):  # a torch tensor: (C, H, W) or (H, W)
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3:
            arr = arr.transpose(1, 2, 0)
    elif isinstance(image, np.ndarray):  # (H, W) or (H, W, C)
        arr = image
    else:
        raise TuduiError(f"{where}: the image is a {type(image).__name__}; give a PIL image, an HxW[xC] numpy "
                         "array or a CxHxW tensor")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise TuduiError(f"{where}: an image array of shape {tuple(image.shape)} is not HxW, HxWxC or CxHxW "
                         "with 1, 3 or 4 channels")
    if arr.dtype != np.uint8:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if np.issubdtype(arr.dtype, np.floating):
            if lo < 0 or hi > 1:
                raise TuduiError(f"{where}: float pixels range over [{lo:.3g}, {hi:.3g}], not [0, 1]; give the image "
                                 "before Normalize (tudui measures and applies mean/std itself), e.g. ToTensor only")
            arr = arr * 255.0
        elif lo < 0 or hi > 255:
            raise TuduiError(f"{where}: integer pixels range over [{lo:g}, {hi:g}]; give 8-bit values (0..255)")
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


class DatasetItem:
    """Item `index` of a user Dataset, loaded only when its pixels are needed (decode_image calls `open`)."""

    __slots__ = ("dataset", "index", "origin")

    def __init__(self, dataset: Any, index: int, origin: str) -> None:
        self.dataset, self.index, self.origin = dataset, index, origin

    def open(self) -> Image.Image:
        return to_pil(self.dataset[self.index][0], str(self))

    def __str__(self) -> str:
        return f"{self.origin}[{self.index}]"

    __repr__ = __str__


def _labels(ds: Any, origin: str) -> list[int | str]:
    """Every item's label: from a `targets` attribute (torchvision's datasets have one), else item by item."""
    targets = getattr(ds, "targets", None)
    if targets is not None and len(targets) == len(ds):
        return [_label_of((None, t), i, origin) for i, t in enumerate(targets)]
    return [_label_of(ds[i], i, origin) for i in range(len(ds))]


def _multi_split(labels: list, ds: Any, origin: str, classes: list[str] | None, task: str) -> Split:
    """Items labelled by lists of names or multi-hot vectors: a multi-label Split (or, with --task single, a
    single-label one where each item has exactly one)."""
    vectors = [label for label in labels if isinstance(label, np.ndarray)]
    if vectors:
        if len(vectors) != len(labels):
            raise TuduiError(f"{origin} mixes multi-hot vectors with other labels; use one kind")
        given = classes or getattr(ds, "classes", None)
        k = len(given) if given else len(vectors[0])
        bad = next((i for i, v in enumerate(vectors) if len(v) != k), None)
        if bad is not None:
            raise TuduiError(f"item {bad} of {origin} has a multi-hot vector of length {len(vectors[bad])}; "
                             + (f"there are {k} classes" if given else f"item 0's has {k}")
                             + ": every label vector needs one 0/1 per class")
        names = [str(c) for c in given] if given else [str(j) for j in range(k)]
        lists = [[names[j] for j in np.flatnonzero(v)] for v in vectors]
        reading = LabelReading(task=task)
        return labelled_split(_items(ds, origin), lists, origin, reading, lambda i: f"item {i} of {origin}", names)
    if any(isinstance(label, int) for label in labels):
        raise TuduiError(f"{origin} mixes int labels with lists of class names; use one kind")
    lists = [label if isinstance(label, list) else [label] for label in labels]
    reading = LabelReading.of(None, task, classes)
    return labelled_split(_items(ds, origin), lists, origin, reading, lambda i: f"item {i} of {origin}")


def _items(ds: Any, origin: str) -> list:
    return [DatasetItem(ds, i, origin) for i in range(len(ds))]


def split_from_dataset(ds: Any, origin: str, classes: list[str] | None = None, task: str = "auto") -> Split:
    """A Split of lazy DatasetItems with targets indexing `classes` (given, or from the labels); items labelled by a
    list of names or a multi-hot vector make a multi-label Split (data/labels.py)."""
    try:
        n = len(ds)
    except TypeError:
        raise TuduiError(f"{origin} has no length; a Dataset needs __len__ and __getitem__") from None
    if n == 0:
        raise TuduiError(f"{origin} is empty")
    labels = _labels(ds, origin)
    kinds = {type(label) for label in labels}
    if kinds & {list, np.ndarray}:
        return _multi_split(labels, ds, origin, classes, task)
    if kinds == {str}:
        names = list(classes) if classes else sorted(set(labels))
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise TuduiError(f"{origin} has labels not in classes=: {', '.join(unknown[:10])}")
        index = {c: k for k, c in enumerate(names)}
        targets = [index[label] for label in labels]
    elif kinds == {int}:
        given = classes or getattr(ds, "classes", None)
        names = [str(c) for c in given] if given else [str(k) for k in range(max(labels) + 1)]
        bad = [label for label in labels if not 0 <= label < len(names)]
        if bad:
            raise TuduiError(f"{origin} has class index {bad[0]}, outside 0..{len(names) - 1} for {len(names)} classes")
        targets = labels
    else:
        raise TuduiError(f"{origin} mixes int and str labels; use one kind")
    items = [DatasetItem(ds, i, origin) for i in range(n)]
    return Split(names, np.asarray(targets, dtype=np.int64), paths=items, origin=origin)


def _instance_of(cls: type, origin: str, ref: str | None) -> Any:
    """`--data data.py:MyData` names a class: an instance of it when its constructor needs no arguments."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # a signature Python cannot read (a C extension class): just try it
        params = []
    needed = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                                             p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if needed:
        file = ref.rpartition(":")[0] if ref else "your_file.py"
        call = f"{cls.__name__}({', '.join(f'{n}=...' for n in needed)})"
        raise TuduiError(f"{origin} is a Dataset class whose constructor needs arguments ({', '.join(needed)}); "
                         f"--data FILE.py:NAME takes a dataset object or a function of no arguments: add "
                         f"`train_data = {call}` to {file} and pass --data {file}:train_data (or, in Python, "
                         f"tudui.train(data={call}, ...))")
    try:
        return cls()
    except TypeError as e:
        raise TuduiError(f"{origin} is a class; tudui made one with no arguments and that failed ({e})") from None


def splits_from_object(obj: Any, origin: str, classes: list[str] | None = None, ref: str | None = None,
                       task: str = "auto") -> dict[str, Split]:
    """{'train': ..., optional 'val', 'test'} from a Dataset, a list of Datasets (concatenated) or a dict of them;
    `ref` is the 'file.py:name' it was named by, for messages."""
    if isinstance(obj, type):  # `--data data.py:MyData`: the class, not a dataset made from it
        obj = _instance_of(obj, origin, ref)
    if callable(obj) and not is_dataset(obj) and not isinstance(obj, type):
        try:
            obj = obj()  # `--data data.py:make_dataset`: a function of no arguments
        except TypeError as e:
            raise TuduiError(f"{origin} is a function; tudui calls it with no arguments ({e})") from None
    if isinstance(obj, dict):
        unknown = sorted(set(obj) - set(SPLITS))
        if unknown or "train" not in obj:
            raise TuduiError(f"{origin}: a dict of datasets needs a 'train' key and may have 'val' and 'test' "
                             f"(got {', '.join(map(str, obj))})")
        found = {k: splits_from_object(v, f"{origin}[{k!r}]", classes, task=task)["train"] for k, v in obj.items() if v is not None}
        return found
    if isinstance(obj, (list, tuple)):
        from torch.utils.data import ConcatDataset  # the course's `ants_dataset + bees_dataset` is one too

        return {"train": split_from_dataset(ConcatDataset(list(obj)), origin, classes, task)}
    if is_dataset(obj):
        return {"train": split_from_dataset(obj, origin, classes, task)}
    raise TuduiError(f"{origin} is a {type(obj).__name__}, not a Dataset (with __len__ and __getitem__), a list of "
                     "them, or a dict of 'train'/'val'/'test' datasets")
