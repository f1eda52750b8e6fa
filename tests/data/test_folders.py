"""Dataset layouts: class folders, label files, CSV, splits and concatenation."""
import contextlib
import os
import signal
import unicodedata

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
    from tudui.data.loaders import MappedLoader, MemoryLoader

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


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail (not hang) when the body blocks, e.g. opening a FIFO that nobody writes to."""
    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _specials(folder):
    """A FIFO and a link to /dev/zero, both named like images, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.png")
    (folder / "zero.png").symlink_to("/dev/zero")


posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                                reason="POSIX FIFOs and /dev/zero")


@posix_only
def test_special_files_in_every_layout_are_skipped_and_named_once(tmp_path, capfd):
    """A FIFO named x.png hung training, a link x.png -> /dev/zero read without end: only regular files are listed,
    and one warning names the ones left out (class folders, the course's label files, CSV rows)."""
    for cls in ["a", "b"]:
        _img(tmp_path / "folders" / cls / "0.png")
        _img(tmp_path / "labels" / f"{cls}_image" / "0.png")
        (tmp_path / "labels" / f"{cls}_label").mkdir()
        (tmp_path / "labels" / f"{cls}_label" / "0.txt").write_text(cls)
    _specials(tmp_path / "folders" / "a")
    _specials(tmp_path / "labels" / "a_image")
    (tmp_path / "list.csv").write_text("folders/a/0.png,a\nfolders/b/0.png,b\nfolders/a/fifo.png,a\n"
                                       "folders/a/zero.png,b\n")
    for data in ["folders", "labels", "list.csv"]:
        with _deadline(30):
            s = read_folder_splits(str(tmp_path / data))["train"]
        assert len(s) == 2 and s.classes == ["a", "b"] and not any("fifo" in p or "zero" in p for p in s.paths)
        err = capfd.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("warning: skipped 2 file(s) that are not regular files"), err
        assert "fifo.png (a FIFO)" in err[0] and "zero.png (a link to /dev/zero, a character device)" in err[0]
    # a label file that is a FIFO is refused by name, never opened
    (tmp_path / "labels" / "b_label" / "0.txt").unlink()
    os.mkfifo(tmp_path / "labels" / "b_label" / "0.txt")
    with _deadline(30), pytest.raises(TuduiError, match=r"label file .*0\.txt is a FIFO, not a regular file"):
        read_folder_splits(str(tmp_path / "labels"))
    os.mkfifo(tmp_path / "fifo-data")
    with _deadline(30), pytest.raises(TuduiError, match="fifo-data is a FIFO; --data takes"):
        read_folder_splits(str(tmp_path / "fifo-data"))


def _values(split):
    """{path relative to its class folder's parent: class name}."""
    return {os.path.relpath(p, split.origin): split.classes[t] for p, t in zip(split.paths, split.targets)}


def test_a_link_back_into_the_dataset_is_not_followed(tmp_path, capfd):
    """`tshirt/again -> ..` listed the whole dataset again inside tshirt (trouser images labelled tshirt, 41x the
    images): a folder link into a folder above it, or into one already read, is not followed, with one warning."""
    for cls in ["trouser", "tshirt"]:
        for i in range(3):
            _img(tmp_path / cls / f"{i}.png", 40 * i)
    (tmp_path / "tshirt" / "again").symlink_to("..")
    (tmp_path / "trouser" / "self").symlink_to(".")
    (tmp_path / "trouser" / "deeper").mkdir()
    (tmp_path / "trouser" / "deeper" / "up").symlink_to("../..")
    with _deadline(20):  # the loops made the listing grow exponentially, until names got too long
        s = read_folder_splits(str(tmp_path))["train"]
    assert _values(s) == {f"{c}/{i}.png": c for c in ["trouser", "tshirt"] for i in range(3)}
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: did not follow 3 folder link(s)"), err
    assert "tshirt/again -> .." in err[0] and "trouser/self -> ." in err[0] and "deeper/up -> ../.." in err[0]


def test_one_file_reached_by_two_paths_is_read_once_from_its_own_folder(tmp_path, capfd):
    """`tshirt/t -> ../trouser` (a sibling class, listed first) reached each trouser image twice: it is read once,
    under trouser (the path through no folder link), and the warning says which path was kept and which skipped.
    Two links to one outside folder inside one class read it once too."""
    for cls in ["trouser", "tshirt"]:
        for i in range(2):
            _img(tmp_path / "data" / cls / f"{i}.png", 40 * i)
    _img(tmp_path / "outside" / "o.png")
    (tmp_path / "data" / "tshirt" / "t").symlink_to("../trouser")
    (tmp_path / "data" / "tshirt" / "o1").symlink_to(tmp_path / "outside")
    (tmp_path / "data" / "tshirt" / "o2").symlink_to(tmp_path / "outside")
    with _deadline(20):
        s = read_folder_splits(str(tmp_path / "data"))["train"]
    assert _values(s) == {"trouser/0.png": "trouser", "trouser/1.png": "trouser", "tshirt/0.png": "tshirt",
                          "tshirt/1.png": "tshirt", "tshirt/o1/o.png": "tshirt"}
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 2 and "tshirt/o2 -> " in err[0], err
    assert err[1].startswith("warning: 2 image file(s) are reached by two paths (links); each is read once: kept ")
    assert f"kept {tmp_path}/data/trouser/0.png, skipped {tmp_path}/data/tshirt/t/0.png" in err[1]


def test_folders_linked_from_elsewhere_still_count(tmp_path, capfd):
    """The legitimate use of folder links: a class folder, or a folder inside one, kept elsewhere."""
    for i in range(2):
        _img(tmp_path / "elsewhere" / "cats" / f"{i}.png")
        _img(tmp_path / "elsewhere" / "more dogs" / f"{i}.png")
        _img(tmp_path / "data" / "dogs" / f"{i}.png")
    (tmp_path / "data" / "cats").symlink_to(tmp_path / "elsewhere" / "cats", target_is_directory=True)
    (tmp_path / "data" / "dogs" / "more").symlink_to(tmp_path / "elsewhere" / "more dogs")
    s = read_folder_splits(str(tmp_path / "data"))["train"]
    assert s.classes == ["cats", "dogs"] and s.counts().tolist() == [2, 4]
    assert capfd.readouterr().err == ""


def _mkdir_bytes(path: bytes) -> None:
    try:
        os.makedirs(path)
    except (OSError, UnicodeError):  # e.g. APFS refuses names that are not UTF-8
        pytest.skip("this file system takes only UTF-8 names")


def test_a_class_folder_named_in_latin1_is_refused_by_name(tmp_path):
    """b'caf\\xe9' stopped training with a UnicodeEncodeError traceback (and with --cache off it trained a model that
    the server could not describe): refused with one line that shows the undecodable byte and says to rename."""
    root = os.fsencode(tmp_path)
    _mkdir_bytes(root + b"/caf\xe9")
    _img(tmp_path / os.fsdecode(b"caf\xe9") / "0.png")
    _img(tmp_path / "tea" / "0.png")
    with pytest.raises(TuduiError) as e:
        read_folder_splits(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and f"class folder {tmp_path}/caf\\xe9 has a name that is not UTF-8" in msg
    assert "rename it" in msg
    msg.encode("utf-8")  # printable as it is


def test_a_latin1_file_name_in_a_class_folder_is_read(tmp_path):
    root = os.fsencode(tmp_path)
    _mkdir_bytes(root + b"/cafe")
    _img(tmp_path / "tea" / "0.png")
    Image.new("L", (8, 8), 99).save(root + b"/cafe/caf\xe9.png")
    s = read_folder_splits(str(tmp_path))["train"]
    assert s.classes == ["cafe", "tea"] and os.fsencode(s.paths[0]) == root + b"/cafe/caf\xe9.png"


def test_nfc_and_nfd_spellings_of_a_class_are_one_class(tmp_path, capfd):
    """macOS writes 'café' decomposed (NFD), Linux keeps what it is given: a dataset copied between them can hold
    both spellings, which look the same; they are one class, named in NFC, in every split and in every layout."""
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    _img(tmp_path / "train" / nfc / "0.png")
    try:
        _img(tmp_path / "train" / nfd / "1.png")
    except FileExistsError:
        pytest.skip("this file system folds Unicode spellings itself")
    if len(list((tmp_path / "train").iterdir())) < 2:
        pytest.skip("this file system folds Unicode spellings itself")
    _img(tmp_path / "train" / "tea" / "0.png")
    _img(tmp_path / "val" / nfd / "0.png")
    _img(tmp_path / "val" / "tea" / "0.png")
    train, val, _ = load_splits([str(tmp_path)])
    assert train.classes == val.classes == [nfc, "tea"] and train.counts().tolist() == [2, 1]
    err = capfd.readouterr().err
    assert "'cafe\\u0301' and 'caf\\xe9' are one class 'café'" in err and len(err.splitlines()) == 1
    (tmp_path / "list.csv").write_text(f"train/{nfc}/0.png,{nfd}\ntrain/tea/0.png,tea\ntrain/{nfd}/1.png,{nfc}\n")
    s = read_folder_splits(str(tmp_path / "list.csv"))["train"]
    assert s.classes == [nfc, "tea"] and s.counts().tolist() == [2, 1]
    # a model trained before names were normalised knows the class in the spelling it was trained on
    s.reindex(["tea", nfd])
    assert s.classes == ["tea", nfd] and s.counts().tolist() == [1, 2]


def test_a_link_to_a_folder_read_later_does_not_take_its_images(tmp_path, capfd):
    """`cls/a -> b/c` is listed before b/c itself: the images are still kept under b/c, their own path."""
    for i in range(2):
        _img(tmp_path / "data" / "cls" / "b" / "c" / f"{i}.png")
        _img(tmp_path / "data" / "other" / f"{i}.png")
    (tmp_path / "data" / "cls" / "a").symlink_to("b/c")
    with _deadline(20):
        s = read_folder_splits(str(tmp_path / "data"))["train"]
    assert sorted(_values(s)) == ["cls/b/c/0.png", "cls/b/c/1.png", "other/0.png", "other/1.png"]
    err = capfd.readouterr().err
    assert "kept" in err and "skipped" in err and "cls/a/0.png" in err


def test_folders_of_images_without_class_folders_are_one_class_each(tmp_path):
    """`--data ants bees` (the course's `ants_dataset + bees_dataset`): each folder of images is one class named
    after it; one such folder alone is refused as one class, naming it."""
    for cls, n in (("ants", 3), ("bees", 4)):
        for i in range(n):
            _img(tmp_path / "hymenoptera" / cls / f"{i}.jpg", 10 * i)
    ants, bees = tmp_path / "hymenoptera" / "ants", tmp_path / "hymenoptera" / "bees"
    train, val, test = load_splits([str(ants), str(bees)], val_split=0)
    assert train.classes == ["ants", "bees"] and train.counts().tolist() == [3, 4] and val is test is None
    assert sorted(train.paths) == sorted(str(p) for p in (tmp_path / "hymenoptera").rglob("*.jpg"))
    with pytest.raises(TuduiError, match=r"only one class \(ants\).*--data ants bees"):
        load_splits([str(ants)])
    whole, _, _ = load_splits([str(tmp_path / "hymenoptera")], val_split=0)  # the parent: class folders as before
    assert whole.classes == ["ants", "bees"]


def test_classes_json_names_the_class_folders(tmp_path):
    """classes.json beside class folders maps each folder to its class name (UTF-8, in NFC like folder names);
    folders it does not name keep their own name; a broken manifest is one clear error."""
    for cls in ("T-shirt_top", "Bag", "shoes"):
        for i in range(2):
            _img(tmp_path / "data" / cls / f"{i}.png")
    manifest = tmp_path / "data" / "classes.json"
    manifest.write_text('{"T-shirt_top": "T-shirt/top", "shoes": "%s"}' % unicodedata.normalize("NFD", "café 鞋"),
                        encoding="utf-8")
    s = read_folder_splits(str(tmp_path / "data"))["train"]
    assert s.classes == ["Bag", "T-shirt/top", "café 鞋"] and s.counts().tolist() == [2, 2, 2]
    for text, match in (("[1, 2]", "JSON object of folder names"), ("{", "cannot be read"),
                        ('{"Bag": "x", "shoes": "x"}', "names the class 'x' for 2 folders")):
        manifest.write_text(text, encoding="utf-8")
        with pytest.raises(TuduiError, match=match):
            read_folder_splits(str(tmp_path / "data"))


def test_eval_split_all_is_every_image_and_the_default_without_split_folders(tmp_path):
    """`tudui eval --split all` scores every image; it is the default for data with no train/val/test folders,
    test stays the default where there is one (digits: tests/e2e/test_export_cli.py), and train/ + val/ without test/ names the splits it has."""
    from tudui.data import load_eval_split

    for cls in ("a", "b", "c"):
        for i in range(10):
            _img(tmp_path / "flat" / cls / f"{i}.png", i)
        for split in ("train", "val"):
            _img(tmp_path / "split" / split / cls / "x.png")
    flat = str(tmp_path / "flat")
    chosen, name = load_eval_split([flat])
    assert name == "all" and len(chosen) == 30 and chosen.classes == ["a", "b", "c"]
    held, name = load_eval_split([flat], "val", val_split=0.1)
    assert name == "val" and len(held) == 3  # the training run's hold-out, as before
    with pytest.raises(TuduiError, match="no test split; use --split val, or --split all"):
        load_eval_split([str(tmp_path / "split")])
    assert len(load_eval_split([str(tmp_path / "split")], "all")[0]) == 6


def test_classes_json_names_the_classes_of_the_label_file_layout(tmp_path):
    """The same classes.json beside `X_image/` + `X_label/` folders: a label may hold the folder's X or the class."""
    for folder, text in (("T-shirt_top", "T-shirt_top"), ("Bag", "Bag")):
        for i, label in enumerate((text, "T-shirt/top" if folder == "T-shirt_top" else "Bag")):
            _img(tmp_path / f"{folder}_image" / f"{i}.png")
            (tmp_path / f"{folder}_label").mkdir(exist_ok=True)
            (tmp_path / f"{folder}_label" / f"{i}.txt").write_text(label, encoding="utf-8")
    (tmp_path / "classes.json").write_text('{"T-shirt_top": "T-shirt/top"}', encoding="utf-8")
    s = read_folder_splits(str(tmp_path))["train"]
    assert s.classes == ["Bag", "T-shirt/top"] and s.counts().tolist() == [2, 2]


def test_a_folder_that_holds_no_class_folders_is_told_what_it_does_hold(tmp_path):
    """Loose images, a lone CSV and one class folder were all told the same "(one subfolder per class)" story; a
    folder of loose images is one class now (named after it), so alone it is told it is one class."""
    for i in range(3):
        _img(tmp_path / "loose" / f"{i}.png", 10 * i)
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "labels.csv").write_text("path,label\n", encoding="utf-8")
    for i in range(3):
        _img(tmp_path / "one" / "only" / f"{i}.png", 10 * i)
    said = {}
    for name in ("loose", "table", "one"):
        with pytest.raises(TuduiError) as e:
            load_splits([str(tmp_path / name)])
        said[name] = str(e.value)
    assert said["loose"].endswith("has only one class (loose); a classifier needs at least two: one subfolder per "
                                  "class (root/ants/*.jpg, root/bees/*.jpg), or one folder per class (--data ants bees)")
    assert said["table"] == (f"{tmp_path / 'table'} holds no images but a CSV file (labels.csv); to read path,label "
                             f"rows, pass the CSV itself: --data {tmp_path / 'table' / 'labels.csv'}")
    assert said["one"].endswith("has only one class (only); a classifier needs at least two: one subfolder per "
                                "class (root/ants/*.jpg, root/bees/*.jpg), or one folder per class (--data ants bees)")
