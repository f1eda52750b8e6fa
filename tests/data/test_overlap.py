"""Training warns, with counts, when validation or test images are training images (the same file or the same
pixels): scores on them say nothing about new images."""
from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

import tudui
from tudui.data.overlap import overlap_message, same_files, same_pixels
from tudui.data.split import Split


def _train(tmp_path, capsys, data, **kw):
    tudui.train(data=[str(data)], model="fast", epochs=1, batch_size=16, img_size=16, plots=False, tensorboard=False,
                project=str(tmp_path / "runs"), name="run", exist_ok=True, **kw)
    return [line for line in capsys.readouterr().err.splitlines() if "also training images" in line]


def test_a_validation_split_held_out_of_a_csv_of_repeated_rows_is_warned_about(tmp_path, capsys):
    root = tmp_path / "csv"
    root.mkdir()
    Image.new("L", (16, 16), 40).save(root / "a.png")
    Image.new("L", (16, 16), 200).save(root / "b.png")
    csv_path = root / "labels.csv"  # 400 rows naming two files: every held-out row is a training file
    csv_path.write_text("".join(f"{'ab'[i % 2]}.png,{'ab'[i % 2]}\n" for i in range(400)), encoding="utf-8")
    warnings = _train(tmp_path, capsys, csv_path)
    assert len(warnings) == 1, warnings
    assert "warning: 40 of 40 val images (100%) are also training images (40 by file, 40 by identical pixels)" \
        in warnings[0] and "tudui data check" in warnings[0] and str(csv_path) in warnings[0]
    # decoded every epoch (nothing held in memory): compared by file only, still warned
    warnings = _train(tmp_path, capsys, csv_path, cache="off", memory="off")
    assert len(warnings) == 1 and "(40 by file)" in warnings[0]


def test_a_val_folder_copied_from_train_is_warned_about(tmp_path, capsys, fmnist):
    from tests.conftest import write_class_folders

    train_split, test_split = fmnist
    write_class_folders(tmp_path / "data" / "train", train_split, 4, "png")
    write_class_folders(tmp_path / "data" / "val", test_split, 2, "png")
    assert _train(tmp_path, capsys, tmp_path / "data") == []  # distinct images: nothing to say
    shutil.rmtree(tmp_path / "data" / "val")
    shutil.copytree(tmp_path / "data" / "train", tmp_path / "data" / "val")  # val/ is a copy of train/
    warnings = _train(tmp_path, capsys, tmp_path / "data")
    assert len(warnings) == 1 and "40 of 40 val images (100%)" in warnings[0] and "(40 by identical pixels)" in warnings[0]


def test_counting_copies_by_file_and_by_pixels(tmp_path):
    for n in "abc":
        Image.new("L", (4, 4), ord(n)).save(tmp_path / f"{n}.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    paths = lambda *names: [str(tmp_path / n) for n in names]  # noqa: E731
    train = Split(["x"], np.zeros(2, np.int64), paths=paths("a.png", "b.png"))
    val = Split(["x"], np.zeros(3, np.int64), paths=paths("link.png", "c.png", "b.png"))
    assert same_files(train, val) == 2  # a link is the file it names
    pixels = np.arange(3 * 4, dtype=np.uint8).reshape(3, 2, 2, 1)
    train = Split(["x"], np.zeros(3, np.int64), images=pixels)
    assert same_pixels(train, Split(["x"], np.zeros(2, np.int64), images=pixels[[2, 1]] + np.uint8(0))) == 2
    assert same_pixels(train, Split(["x"], np.zeros(1, np.int64), images=pixels[:1] + np.uint8(1))) == 0
    assert same_pixels(train, Split(["x"], np.zeros(1, np.int64), paths=["x.png"])) is None
    # images that differ in one byte the fingerprint does not sample are told apart by the whole-image hash
    big = np.random.default_rng(0).integers(0, 256, (50, 64, 64, 3), dtype=np.uint8)
    near = big[:5].copy()
    near.reshape(5, -1)[:, 1] ^= 1
    assert same_pixels(Split(["x"], np.zeros(50, np.int64), images=big),
                       Split(["x"], np.zeros(10, np.int64), images=np.concatenate([near, big[5:10]]))) == 5
    assert overlap_message("val", 10, 0, 0, "d") is None
    assert "1 of 10,000 val images (0.01%)" in overlap_message("val", 10_000, 1, None, "d")
    assert overlap_message("test", 10, 0, 3, "d").startswith("warning: 3 of 10 test images (30%)")
