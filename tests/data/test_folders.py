"""Dataset layouts: class folders, label files, CSV, splits and concatenation."""
import numpy as np
import pytest
from PIL import Image

from tudui.data import load_splits
from tudui.data.folders import read_folder_splits
from tudui.core.errors import TuduiError


def _img(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def test_class_folders_sorted_like_imagefolder(tmp_path):
    for cls in ["bees", "Ants", "ants"]:
        for i in range(2):
            _img(tmp_path / cls / f"{i}.png")
    s = read_folder_splits(str(tmp_path))["train"]
    assert s.classes == ["Ants", "ants", "bees"]  # torchvision's ImageFolder: plain sorted()
    assert s.counts().tolist() == [2, 2, 2]


def test_label_file_layout(tmp_path):
    for cls in ["ants", "bees"]:
        for i in range(3):
            _img(tmp_path / f"{cls}_image" / f"{i}.jpg")
            (tmp_path / f"{cls}_label").mkdir(exist_ok=True)
            (tmp_path / f"{cls}_label" / f"{i}.txt").write_text(cls + "\n")
    s = read_folder_splits(str(tmp_path))["train"]
    assert s.classes == ["ants", "bees"] and s.counts().tolist() == [3, 3]
    (tmp_path / "bees_label" / "0.txt").write_text("wasps")
    with pytest.raises(TuduiError, match="'wasps'.*names no class"):
        read_folder_splits(str(tmp_path))


def test_csv_layout(tmp_path):
    rows = ["path,label"]
    for i in range(4):
        _img(tmp_path / "imgs" / f"{i}.png")
        rows.append(f"imgs/{i}.png,{'cat' if i % 2 else 'dog'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    s = read_folder_splits(str(tmp_path / "labels.csv"))["train"]
    assert s.classes == ["cat", "dog"] and len(s) == 4
    (tmp_path / "bad.csv").write_text("imgs/missing.png,cat\n")
    with pytest.raises(TuduiError, match="do not exist"):
        read_folder_splits(str(tmp_path / "bad.csv"))


def test_train_val_test_subfolders_and_concatenation(tmp_path):
    for split in ["train", "val", "test"]:
        for cls in ["a", "b"]:
            _img(tmp_path / "one" / split / cls / "x.png")
    for cls in ["b", "c"]:
        for i in range(2):
            _img(tmp_path / "two" / cls / f"{i}.png")
    train, val, test = load_splits([str(tmp_path / "one")])
    assert len(train) == 2 and len(val) == 2 and len(test) == 2
    merged, _, _ = load_splits([str(tmp_path / "one" / "train"), str(tmp_path / "two")], val_split=0)
    assert merged.classes == ["a", "b", "c"] and merged.counts().tolist() == [1, 3, 2]


def test_holdout_is_stratified_and_seeded(tmp_path):
    for cls in ["a", "b"]:
        for i in range(10):
            _img(tmp_path / cls / f"{i}.png")
    t1, v1, _ = load_splits([str(tmp_path)], val_split=0.2, seed=3)
    t2, v2, _ = load_splits([str(tmp_path)], val_split=0.2, seed=3)
    assert v1.counts().tolist() == [2, 2] and v1.paths == v2.paths
    assert not set(v1.paths) & set(t1.paths)


@pytest.mark.parametrize("setup, match", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "empty folder"),
    (lambda p: [_img(p / "only" / f"{i}.png") for i in range(3)], "only one class"),
])
def test_bad_paths(tmp_path, setup, match):
    target = tmp_path / "data"
    setup(target)
    with pytest.raises(TuduiError, match=match):
        load_splits([str(target)])
