"""`tudui data check` on a folder with corrupt, zero-byte, non-image and duplicate files; training skips them."""
from __future__ import annotations

import json
import shutil

import pytest

from tudui.cli import main as tudui_main
from tudui.data.check import check_data
from tudui.engine.trainer import fit
from tudui.core.config import TrainConfig
from tudui.core.errors import TuduiError


@pytest.fixture(scope="module")
def dirty(tmp_path_factory, fmnist):
    """Real Fashion-MNIST folders (6 train / 2 val images per class) plus every kind of bad file."""
    from tests.conftest import write_class_folders

    train_split, test_split = fmnist
    root = tmp_path_factory.mktemp("dirty")
    write_class_folders(root / "train", train_split, 6, "png")
    write_class_folders(root / "val", test_split, 2, "png")
    classes = sorted(p.name for p in (root / "train").iterdir())
    a, b, c = (root / "train" / n for n in classes[:3])
    good = sorted(a.glob("*.png"))[0]
    (a / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (a / "empty.png").write_bytes(b"")
    (b / "fake.jpg").write_text("this is not a JPEG")
    (b / "notes.txt").write_text("collected by hand")
    shutil.copy(good, a / "again.png")  # duplicate within the split, same label
    shutil.copy(good, c / "mislabelled.png")  # the same image under another label
    val_img = sorted((root / "val" / a.name).glob("*.png"))[0]
    shutil.copy(val_img, a / "from_val.png")  # a validation image leaking into training
    return root


def kinds(report) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for i in report.issues:
        out.setdefault(i.kind, set()).add(i.path.rsplit("/", 1)[-1])
    return out


def test_data_check_reports_each_problem(dirty):
    report = check_data([str(dirty)])
    k = kinds(report)
    assert k["corrupt"] == {"truncated.png"}
    assert k["zero-byte"] == {"empty.png"}
    assert k["not-an-image"] == {"fake.jpg"}
    assert k["other-file"] == {"notes.txt"}
    assert k["duplicate"] == {"again.png"}
    assert k["conflicting-labels"] == {"mislabelled.png"}
    # The leak is reported on the validation file, naming the training copy of it.
    leaks = [i for i in report.issues if i.kind == "leak"]
    val_img = sorted((dirty / "val" / sorted(p.name for p in (dirty / "train").iterdir())[0]).glob("*.png"))[0]
    assert len(leaks) == 1 and leaks[0].path == str(val_img) and "from_val.png" in leaks[0].detail
    errors = {i.kind for i in report.errors}
    assert {"corrupt", "zero-byte", "not-an-image", "leak", "conflicting-labels"} <= errors
    assert "other-file" not in errors and "duplicate" not in errors
    train = next(s for s in report.splits if s.name == "train")
    assert len(train.classes) == 10 and train.modes == {"L": train.images}
    assert train.imbalance == pytest.approx(max(train.classes.values()) / min(train.classes.values()))


def test_data_check_cli_exit_status_and_json(dirty, tmp_path, capsys):
    assert tudui_main(["data", "check", str(dirty)]) == 1
    out = capsys.readouterr().out
    assert "truncated.png" in out and "imbalance ratio" in out and "error(s)" in out
    assert tudui_main(["data", "check", str(dirty / "val"), "--json"]) == 0  # the val folder alone is clean
    assert json.loads(capsys.readouterr().out)["errors"] == 0


def test_training_skips_bad_files_with_one_warning(dirty, tmp_path, capsys):
    cfg = TrainConfig(data=[str(dirty)], model="mnist-cnn", epochs=1, batch_size=32, device="cpu",
                      project=str(tmp_path), name="dirty")
    result = fit(cfg)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 1, err
    assert all(n in warnings[0] for n in ("truncated.png", "empty.png", "fake.jpg"))
    assert len(result.history) == 1
    with pytest.raises(TuduiError, match=r"3 unreadable image\(s\)( in [^:]+)?: .*--bad-images skip"):
        fit(TrainConfig(**(cfg.to_dict() | {"bad_images": "error", "name": "strict"})))


def _two_files_csv(root, rows: int):
    """A CSV of `rows` rows naming the same two real images (labels a and b by turns): what a script gone wrong
    writes."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    Image.new("L", (16, 16), 40).save(root / "a.png")
    Image.new("L", (16, 16), 200).save(root / "b.png")
    csv_path = root / "labels.csv"
    csv_path.write_text("path,label\n" + "".join(f"{'ab'[i % 2]}.png,{'ab'[i % 2]}\n" for i in range(rows)),
                        encoding="utf-8")
    return csv_path


def test_data_check_summarises_a_flood_of_one_finding(tmp_path, capsys):
    csv_path = _two_files_csv(tmp_path / "flood", 20_000)
    assert tudui_main(["data", "check", str(csv_path)]) == 0  # repeats are warnings
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 40, out[:2000]  # it printed a line per row (~20,000)
    assert "listed 10,000 times in labels.csv" in out and "20,000 readable images" in out
    report = check_data([str(csv_path)])
    assert [(i.kind, i.path.rsplit("/", 1)[-1]) for i in report.issues] == [("duplicate", "a.png"),
                                                                            ("duplicate", "b.png")]


def test_data_check_lists_ten_findings_of_a_kind_then_counts_the_rest(tmp_path, capsys):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("L", (16, 16), 40 if c == "a" else 200).save(tmp_path / c / "good.png")
    for i in range(25):
        (tmp_path / "a" / f"empty{i:02d}.png").write_bytes(b"")
    assert tudui_main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert sum("empty" in line for line in out.splitlines()) == 10
    assert "... and 15 more" in out and "errors (25):" in out
    tudui_main(["data", "check", str(tmp_path), "--json"])
    assert json.loads(capsys.readouterr().out)["errors"] == 25  # every finding, for programs


def _pngs(folder, n: int, mode: str = "L", start: int = 0) -> None:
    """n distinct 16x16 PNGs start.png ... in `mode` (L, RGBA or P): pixel (0, 0) and (1, 0) hold the number."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        img = Image.new("RGBA", (16, 16), (90, 0, 0, 128))
        img.putpixel((0, 0), (i % 256,) * 3 + (128,))
        img.putpixel((1, 0), (i // 256,) * 3 + (128,))
        {"RGBA": img, "P": img.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE),
         "L": img.convert("L")}[mode].save(folder / f"{i:03d}.png")


def test_data_check_refuses_one_class_as_training_does(tmp_path, capsys):
    """A one-class folder is an error in data check with training's own words; folders checked together count
    together, as `tudui train --data a b` trains on them together."""
    from tudui.data import load_splits

    _pngs(tmp_path / "one" / "cats", 4)
    with pytest.raises(TuduiError) as refused:
        load_splits([str(tmp_path / "one")])
    report = check_data([str(tmp_path / "one")])
    assert [(i.kind, i.detail) for i in report.errors] == [("one-class", str(refused.value))]
    assert tudui_main(["data", "check", str(tmp_path / "one")]) == 1
    assert "only one class (cats)" in capsys.readouterr().out
    _pngs(tmp_path / "dogs", 4, start=50)  # a folder of images is one class: cats + dogs are two
    assert not check_data([str(tmp_path / "one" / "cats"), str(tmp_path / "dogs")]).errors
    assert [i.kind for i in check_data([str(tmp_path / "dogs")]).errors] == ["one-class"]


def test_data_check_sums_up_unusual_modes_by_kind(tmp_path, capsys):
    """One warning per unusual mode with its count, what reading it does and a few example files, not one per file
    (and palette images that differ only in their palettes' colours are not duplicates)."""
    _pngs(tmp_path / "a", 8, "RGBA")
    _pngs(tmp_path / "b", 5, "P", start=20)
    _pngs(tmp_path / "b", 3, "L", start=40)
    report = check_data([str(tmp_path)])
    modes = [i for i in report.warnings if i.kind == "mode"]
    assert [i.path for i in modes] == [str(tmp_path)] * 2 and \
        len([i for i in report.warnings if i.kind != "few-val"]) == 2  # (16 images: few validation images too)
    assert modes[0].detail.startswith("8 of 16 images are RGBA (RGB with transparency): the alpha channel is dropped")
    assert "e.g. a/000.png, a/001.png, a/002.png, ..." in modes[0].detail
    assert modes[1].detail.startswith("5 of 16 images are P (palette colours): expanded to RGB")
    assert tudui_main(["data", "check", str(tmp_path)]) == 0
    assert "warnings (3):" in capsys.readouterr().out  # the two modes and few validation images


def test_data_check_says_when_all_classes_are_the_same_size(tmp_path, capsys):
    for c in ("a", "b", "c"):
        _pngs(tmp_path / "even" / c, 3, start=10 * ord(c))
    assert tudui_main(["data", "check", str(tmp_path / "even")]) == 0
    out = capsys.readouterr().out
    assert "9 readable images, 3 classes; all classes have 3 images" in out and "largest" not in out
    _pngs(tmp_path / "even" / "c", 3, start=500)
    assert tudui_main(["data", "check", str(tmp_path / "even")]) == 0
    assert "largest c (6), smallest a (3), imbalance ratio 2.00" in capsys.readouterr().out


def test_data_check_warns_about_classes_with_few_validation_images(dirty, tmp_path):
    """Fewer than 10 validation images of a class: a val/ folder's own, or the 10% --val-split would hold out."""
    few = [i for i in check_data([str(dirty)]).issues if i.kind == "few-val"]  # val/ holds 2 images a class
    assert len(few) == 1 and few[0].severity == "warning" and few[0].path == str(dirty / "val")
    assert "val/ has 10 class(es) fewer than 10 validation images" in few[0].detail
    from PIL import Image

    for name, n in (("big", 100), ("small", 90)):  # a hold-out of 10 and of 9 images
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), i).save(tmp_path / "data" / name / f"{i}.png")
    few = [i for i in check_data([str(tmp_path / "data")]).issues if i.kind == "few-val"]
    assert len(few) == 1 and "--val-split 0.1 hold-out gives 1 class(es)" in few[0].detail
    assert "(small: 9)" in few[0].detail


def test_data_check_recommends_a_balance_mode_and_says_why(tmp_path, capsys):
    """Long-tailed training images get logit-adjust, the mode --balance auto picks from the same counts (those left
    once the --val-split hold-out is taken: 16x where the folder holds 12x), with the ratio and the reason; a
    train/ val/ layout is measured on train/ as it is; classes of about one size get none."""
    from tests.engine.test_balance import _long_tailed

    data = _long_tailed(tmp_path / "long tail")  # 36, 18, 9, 5, 3 images; the 10% hold-out leaves 32 and 2
    assert tudui_main(["data", "check", str(data)]) == 0
    out = capsys.readouterr().out
    assert ("--balance logit-adjust recommended (what --balance auto picks): the largest training class has 16.0x "
            "the images of the smallest once --val-split 0.1 holds images out, over 10") in out
    assert "best.pt by balanced accuracy" in out
    report = check_data([str(data)])
    assert report.balance["mode"] == "logit-adjust" and report.to_dict()["balance"] == report.balance
    split = tmp_path / "split"
    shutil.copytree(data, split / "train")
    shutil.copytree(data / "digit 0", split / "val" / "digit 0")
    assert "the largest training class has 12.0x the images of the smallest, over 10" in \
        check_data([str(split)]).balance["why"]
    for c in ("a", "b"):
        _pngs(tmp_path / "even" / c, 4 if c == "a" else 3, start=10 * ord(c))
    assert check_data([str(tmp_path / "even")]).balance["mode"] == "none"
