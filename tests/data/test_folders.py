"""Dataset layouts: class folders, label files, CSV, splits and concatenation."""
import torch
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


def test_valid_folder_is_the_validation_split(tmp_path):
    """`valid/` (as some downloads name it) is used like `val/`: no hold-out is taken from train/."""
    for i in range(6):
        _img(tmp_path / "train" / "a" / f"{i}.png", 10 * i)
        _img(tmp_path / "train" / "b" / f"{i}.png", 10 * i + 5)
    _img(tmp_path / "valid" / "a" / "v.png", 200)
    _img(tmp_path / "valid" / "b" / "v.png", 201)
    train, val, test = load_splits([str(tmp_path)], val_split=0.5)
    assert len(train) == 12 and test is None  # --val-split is not applied: the folder is the validation split
    assert sorted(val.paths) == sorted(str(p) for p in (tmp_path / "valid").rglob("*.png"))
    assert val.classes == train.classes == ["a", "b"]


def test_memory_limit_switches_to_memory_mapped_cache_rows(tmp_path, capsys):
    """Over --memory-limit-mb a folder trains from its memory-mapped disk cache, batch by batch (not through PIL
    every epoch); --cache off decodes the files every epoch through a DataLoader, as before the cache existed."""
    from tudui.cli import main as tudui_main
    from tudui.core.config import TrainConfig
    from tudui.data import build_data, make_loader
    from tudui.data.memory import MappedLoader, MemoryLoader

    for cls in ["a", "b"]:
        for i in range(20):
            _img(tmp_path / "data" / cls / f"{i}.png", 5 * i + (cls == "b") * 100)
    # 36 training images (4 held out) of 1x8x8 decode to 2,304 bytes: under 1 MB, over 0 MB.
    cfg = dict(data=[str(tmp_path / "data")], val_split=0.1)
    small = build_data(TrainConfig(**cfg, memory_limit_mb=1))
    assert small.in_memory and small.train.images.shape == (36, 8, 8, 1)
    big = build_data(TrainConfig(**cfg, memory_limit_mb=0))
    assert not big.in_memory and big.train.images.shape == (36, 8, 8, 1) and hasattr(big.train.images, "release")
    loader = make_loader(big.train, big.spec, 8, True, torch.device("cpu"), in_memory=big.in_memory)
    assert isinstance(loader, MappedLoader)
    batches = list(loader)
    assert len(batches) == 4 and all(x.shape == (8, 1, 8, 8) and x.dtype == torch.uint8 for x, _ in batches)
    # the same images and labels as the in-memory loader, batch for batch (same seeded shuffle)
    mem = make_loader(small.train, small.spec, 8, True, torch.device("cpu"))
    assert isinstance(mem, MemoryLoader)
    for (xa, ya), (xb, yb) in zip(batches, mem):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    files = build_data(TrainConfig(**cfg, memory_limit_mb=0, cache="off"))
    assert not files.in_memory and files.train.images is None and len(files.train.paths) == 36
    loader = make_loader(files.train, files.spec, 8, True, torch.device("cpu"), in_memory=False)
    assert isinstance(loader, torch.utils.data.DataLoader)
    x, y = next(iter(loader))
    assert x.shape == (8, 1, 8, 8) and x.dtype == torch.uint8
    # The same switch from the command line: the start line says where the data comes from.
    args = ["train", "--data", str(tmp_path / "data"), "--model", "mnist-cnn", "--epochs", "1", "--batch-size", "8",
            "--no-plots", "--no-tensorboard", "--project", str(tmp_path / "runs")]
    assert tudui_main(args + ["--memory-limit-mb", "0"]) == 0
    assert ", train memory-mapped (cache hit); " in capsys.readouterr().out
    assert tudui_main(args + ["--memory-limit-mb", "0", "--cache", "off"]) == 0
    assert ", train from files; val from files, " in capsys.readouterr().out
    assert tudui_main(args + ["--memory-limit-mb", "1"]) == 0
    assert ", train in memory (cache hit); " in capsys.readouterr().out
