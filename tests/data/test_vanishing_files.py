"""Images deleted, truncated or replaced while a run reads them from files: the run goes on, each file reported once."""
from __future__ import annotations

import csv
import os
import re

import numpy as np
import pytest
from PIL import Image

import tudui
from tudui.data.loaders import file_loader
from tudui.data.split import Split
from tudui.engine.callbacks import Callback
from tudui.core.errors import TuduiError


def write_digits(root, per_class: int = 24, classes: int = 3) -> dict[str, list]:
    """Real 8x8 scikit-learn digits as PNGs in root/train/<class>/ and root/val/<class>/; {'train': [...], 'val': [...]}."""
    from sklearn.datasets import load_digits

    d = load_digits()
    files = {"train": [], "val": []}
    for c in range(classes):
        idx = np.flatnonzero(d.target == c)
        for k, i in enumerate(idx[:per_class + per_class // 3]):
            split = "train" if k < per_class else "val"
            folder = root / split / f"数字{c}"  # non-ASCII class folder names on purpose
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{i:04d}.png"
            Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8), "L").save(path)
            files[split].append(path)
    return files


def damage(files: list) -> dict[str, list]:
    """Delete, truncate, overwrite with text, or replace with another readable image; which files got what."""
    deleted, truncated, text, replaced, folder = files[0:2], files[2:4], files[4:5], files[5:7], files[7:8]
    for p in deleted:
        p.unlink()
    for p in truncated:
        data = p.read_bytes()
        p.write_bytes(data[:len(data) // 2])
    for p in text:
        p.write_text("this file was overwritten by a text editor")
    for p in replaced:  # a different size and mode, still an image: read as usual, nothing to report
        tmp = p.with_suffix(".tmp.png")
        Image.fromarray(np.full((13, 9, 3), 200, dtype=np.uint8), "RGB").save(tmp)
        os.replace(tmp, p)
    for p in folder:  # replaced by a directory of the same name
        p.unlink()
        p.mkdir()
    return {"unreadable": deleted + truncated + text + folder, "readable": replaced}


class DamageDuringTraining(Callback):
    """After the `at`-th optimisation step (mid-epoch 1), damage some training and validation images."""

    def __init__(self, files: dict[str, list], at: int = 2) -> None:
        self.files, self.at, self.done = files, at, None

    def on_train_batch(self, run, step, x, y, loss) -> None:
        if step == self.at and self.done is None:
            self.done = {split: damage(files) for split, files in self.files.items()}


@pytest.mark.parametrize("workers", [0, 2])
def test_training_survives_files_changing_under_it_and_reports_each_once(tmp_path, capfd, workers):
    files = write_digits(tmp_path / "data")
    hook = DamageDuringTraining({"train": files["train"][::3][:8], "val": files["val"][:8]})
    # --cache off: the files are decoded every epoch (with the disk cache a run reads no file after its start)
    result = tudui.train(data=[str(tmp_path / "data")], model="mnist-cnn", epochs=3, batch_size=8, cache="off",
                         workers=workers, project=str(tmp_path / "runs"), name="run", tensorboard=False, plots=False,
                         callbacks=[hook])
    err = _absolute(capfd.readouterr().err)
    assert hook.done is not None  # the damage happened, mid-epoch 1
    rows = list(csv.DictReader(open(result.run_dir / "results.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # every epoch ran to the end
    assert result.best.is_file() and result.last.is_file()
    unreadable = [str(p) for split in hook.done.values() for p in split["unreadable"]]
    for path in unreadable:  # the warnings name each broken file exactly once, over three epochs and all workers
        assert err.count(path) == 1, (path, err)
    for split in hook.done.values():
        for path in split["readable"]:
            assert str(path) not in err  # a replaced but readable image is simply read
    warnings = re.findall(r"warning: image (.+?) became unreadable during the run \((.+?)\)", err)
    assert sorted(p for p, _ in warnings) == sorted(unreadable)
    reasons = dict(warnings)
    assert "no such file" in reasons[unreadable[0]]  # deleted
    assert "truncated" in reasons[unreadable[2]]  # cut in half


def _absolute(err: str) -> str:
    """The warnings with each image's path made absolute again: they name it relative to its data folder
    ("image 数字0/0049.png in DATA/train became unreadable")."""
    return re.sub(r"warning: image (.+?) in (.+?) became unreadable",
                  lambda m: f"warning: image {os.path.join(m.group(2), m.group(1))} became unreadable", err)


def _split(tmp_path, n: int = 6) -> Split:
    paths = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((4, 4), i * 40 % 256, dtype=np.uint8), "L").save(p)
        paths.append(str(p))
    return Split(["a", "b"], np.arange(n) % 2, paths=paths, origin=str(tmp_path))


def test_a_vanished_file_is_replaced_by_the_next_readable_one_with_its_label(tmp_path, capfd):
    split = _split(tmp_path)
    loader = file_loader(split, 1, 4, batch_size=6, train=False, workers=0)
    os.remove(split.paths[2])
    for _ in range(2):  # two passes: the warning comes once
        (x, y), = list(loader)
        assert x[:, 0, 0, 0].tolist() == [0, 40, 120, 120, 160, 200]  # image 3 (and label 1) stands in for image 2
        assert y.tolist() == [0, 1, 1, 1, 0, 1]
    assert _absolute(capfd.readouterr().err).count(split.paths[2]) == 1
    assert loader.unreadable == {split.paths[2]: "no such file"}


def test_many_vanished_files_are_counted_after_the_first_ones(tmp_path, capfd):
    split = _split(tmp_path, 30)
    for p in split.paths[:25]:
        os.remove(p)
    loader = file_loader(split, 1, 4, batch_size=5, train=False, workers=0)
    assert sum(len(y) for _, y in loader) == 30
    err = capfd.readouterr().err
    assert len(re.findall("became unreadable during the run", err)) == 10  # LISTED
    assert "15 more image(s)" in err and "(25 in all)" in err
    assert sum(len(y) for _, y in loader) == 30
    assert capfd.readouterr().err == ""  # nothing new on the second pass


def test_policy_error_stops_with_one_line_naming_the_file(tmp_path):
    split = _split(tmp_path)
    loader = file_loader(split, 1, 4, batch_size=2, train=False, workers=0, bad_images="error")
    open(split.paths[1], "wb").close()  # emptied
    with pytest.raises(TuduiError, match=re.escape(split.paths[1]) + r".*--bad-images skip"):
        list(loader)


def test_all_files_gone_is_a_clear_error(tmp_path):
    split = _split(tmp_path, 3)
    loader = file_loader(split, 1, 4, batch_size=2, train=True, workers=0)
    for p in split.paths:
        os.remove(p)
    with pytest.raises(TuduiError, match="none of the 3 images .* can be read any more"):
        list(loader)
