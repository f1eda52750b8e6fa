"""build_data (data/factory.py): the DataSpec's mean/std are measured on the training images only, on every path."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_class_folders
from tudui.core.config import TrainConfig
from tudui.data import factory
from tudui.data.factory import build_data, load_splits
from tudui.data.split import stratified_split

PER_CLASS = {"train": 4, "val": 2, "test": 2}  # 10 classes: 40 + 20 + 20 Fashion-MNIST images


def _pixels(paths) -> np.ndarray:
    """The files' grey pixels in [0, 1] (28x28 PNG: what a 1-channel, 28-px layout decodes them to)."""
    return np.stack([np.asarray(Image.open(p).convert("L"), np.float64) for p in paths]) / 255.0


def _stats(pixels: np.ndarray) -> tuple[list[float], list[float]]:
    """numpy's per-image-set mean and std (ddof=1: the unbiased estimate tudui stores, torch.std's default)."""
    return [float(pixels.mean())], [float(pixels.std(ddof=1))]


def _whiten(paths) -> None:
    """Replace every image file in `paths` by a white image of the same size (a different file for the cache)."""
    for p in paths:
        with Image.open(p) as im:
            size = im.size
        Image.new("L", size, 255).save(p)


def _class_folders(root: Path, fmnist) -> Path:
    train, test = fmnist
    write_class_folders(root / "train", train, PER_CLASS["train"])
    write_class_folders(root / "val", test, PER_CLASS["val"])
    write_class_folders(root / "test", test, PER_CLASS["test"], offset=PER_CLASS["val"])
    return root


def _label_files(root: Path, fmnist) -> Path:
    """The course's layout in train/, val/ and test/: X_image/i.png beside X_label/i.txt holding X."""
    _class_folders(root / "folders", fmnist)
    for split in ("train", "val", "test"):
        for img in sorted((root / "folders" / split).rglob("*.png")):
            label = img.parent.name
            (root / split / f"{label}_image").mkdir(parents=True, exist_ok=True)
            (root / split / f"{label}_label").mkdir(exist_ok=True)
            img.rename(root / split / f"{label}_image" / img.name)
            (root / split / f"{label}_label" / f"{img.stem}.txt").write_text(label, encoding="utf-8")
    return root


def _csv(root: Path, fmnist) -> Path:
    """One CSV of path,label over train/ and val/'s images (its validation split is held out of it)."""
    _class_folders(root, fmnist)
    rows = [(str(p.relative_to(root)), p.parent.name) for p in sorted(root.rglob("*.png"))]
    with open(root / "all.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return root / "all.csv"


class ArrayData:
    """A user Dataset: (HxW uint8 array, class index) items."""

    def __init__(self, images: np.ndarray, targets: np.ndarray) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i][..., 0], int(self.targets[i])


# (how the data is given, TrainConfig options besides data): every way build_data reaches _measure_mean_std
PATHS = {
    "named dataset in memory": ("digits", {}),
    "class folders, disk cache held in memory": ("folders", {}),
    "class folders, memory-mapped cache": ("folders", {"memory_limit_mb": 0}),
    "class folders, --cache ram": ("folders", {"cache": "ram"}),
    "class folders, --cache off": ("folders", {"cache": "off", "memory_limit_mb": 0}),
    "label files": ("labels", {}),
    "csv": ("csv", {"val_split": 0.25}),
    "user Dataset": ("dataset", {}),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_mean_std_are_numpys_over_the_training_images_only(path, tmp_path, fmnist, monkeypatch):
    """The DataSpec's mean/std equal numpy's over the training images; whitening every validation and test image
    leaves them unchanged (and the reference over train + val would not match)."""
    kind, opts = PATHS[path]
    if kind == "digits":
        data = ["digits"]
        real_load = factory.load_named
        whiten = {"on": False}

        def load_named(name, train, *a):  # the same digits, with val's and test's images white when asked
            split = real_load(name, train, *a)
            if whiten["on"]:
                split.images = split.images.copy()
                if train:  # val is held out of the training split: the same stratified, seeded choice
                    split.images[stratified_split(split.targets, 0.1, 0)[1]] = 255
                else:
                    split.images[:] = 255
            return split

        monkeypatch.setattr(factory, "load_named", load_named)
    elif kind == "dataset":
        train, test = fmnist
        parts = {"train": ArrayData(train.images[:40], train.targets[:40]),
                 "val": ArrayData(test.images[:20], test.targets[:20]),
                 "test": ArrayData(test.images[20:40], test.targets[20:40])}
        data = [parts]
    else:
        make = {"folders": _class_folders, "labels": _label_files, "csv": _csv}[kind]
        data = [str(make(tmp_path / "data", fmnist))]
    cfg = {"data": data, "val_split": 0.1} | opts

    if kind == "digits":
        t, v, s = load_splits(["digits"], val_split=0.1)
        train_px = t.images.astype(np.float64) / 255.0
        other_px = np.concatenate([v.images, s.images]).astype(np.float64) / 255.0
    elif kind == "dataset":
        train_px = parts["train"].images.astype(np.float64) / 255.0
        other_px = np.concatenate([parts["val"].images, parts["test"].images]).astype(np.float64) / 255.0
    else:
        t, v, s = load_splits(data, val_split=cfg["val_split"])
        train_px = _pixels(t.paths)
        others = [p for part in (v, s) if part is not None for p in part.paths]
        other_px = _pixels(others)
    mean, std = _stats(train_px)
    both = _stats(np.concatenate([train_px, other_px]))
    assert both[0][0] != pytest.approx(mean[0], rel=1e-6)  # the check below could tell the two apart

    spec = build_data(TrainConfig(**cfg)).spec
    assert spec.mean == pytest.approx(mean, rel=1e-9) and spec.std == pytest.approx(std, rel=1e-9)

    # whiten every image that is not a training image: nothing measured changes
    if kind == "digits":
        whiten["on"] = True
    elif kind == "dataset":
        for name in ("val", "test"):
            parts[name].images = np.full_like(parts[name].images, 255)
    else:
        _whiten(others)
    again = build_data(TrainConfig(**cfg))
    val = again.val  # the white images did arrive where validation reads them
    assert (np.asarray(val.images).min() == 255) if val.images is not None else _pixels(val.paths).min() == 1.0
    assert again.spec.mean == spec.mean and again.spec.std == spec.std
