"""Labels as datasets write them: CSV headers and columns, several labels per image, multi-hot, --task."""
import numpy as np
import pytest
import torch
from PIL import Image

from tudui.core.errors import TuduiError
from tudui.data import load_splits
from tudui.data.folders import read_folder_splits
from tudui.data.labels import LabelReading


def _imgs(root, n=6):
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("L", (8, 8), i * 20).save(root / "img" / f"{i}.png")
    return [f"img/{i}.png" for i in range(n)]


def _read(path, **kw):
    return read_folder_splits(str(path), LabelReading.of(**kw))["train"]


@pytest.mark.parametrize("header", ["path,labels", "image_id,label", "filename,class", "fname,labels", "id,tags"])
def test_a_first_row_that_is_no_file_before_rows_that_are_is_a_header(tmp_path, header):
    paths = _imgs(tmp_path)
    (tmp_path / "d.csv").write_text(header + "\n" + "".join(f"{p},{'ab'[i % 2]}\n" for i, p in enumerate(paths)))
    s = _read(tmp_path / "d.csv")
    assert s.classes == ["a", "b"] and len(s) == 6 and not s.multi
    assert s.targets.tolist() == [0, 1, 0, 1, 0, 1]


def test_a_first_row_naming_a_file_is_data_and_a_missing_file_still_an_error(tmp_path):
    paths = _imgs(tmp_path)
    (tmp_path / "d.csv").write_text("".join(f"{p},{'ab'[i % 2]}\n" for i, p in enumerate(paths)))
    assert len(_read(tmp_path / "d.csv")) == 6  # no header: the first row is an image
    (tmp_path / "gone.csv").write_text("img/9.png,a\nimg/8.png,b\n")  # no row names a file: not taken for a header
    with pytest.raises(TuduiError, match=r"2 file\(s\) listed in .*gone.csv do not exist.*--csv-columns"):
        _read(tmp_path / "gone.csv")


def test_csv_columns_name_the_path_and_label_of_a_wider_csv(tmp_path):
    paths = _imgs(tmp_path)
    rows = "".join(f"{i},train,{p},{['cat', 'dog|bird', ''][i % 3]}\n" for i, p in enumerate(paths))
    (tmp_path / "w.csv").write_text("n,split,File,Tags\n" + rows)
    s = _read(tmp_path / "w.csv", columns=["file", "Tags"])  # header names matched without regard to case
    assert s.classes == ["bird", "cat", "dog"] and s.multi
    assert s.targets.tolist()[:3] == [[0, 1, 0], [1, 0, 1], [0, 0, 0]]
    with pytest.raises(TuduiError, match=r"--csv-columns names 'label', which is not a column of .*w.csv; its header "
                                         r"is n,split,File,Tags"):
        _read(tmp_path / "w.csv", columns=["File", "label"])


def test_the_column_that_names_files_is_found_from_the_header(tmp_path, capsys):
    """Without --csv-columns, a CSV whose first column names no file reads its paths from the one column that does,
    and its labels from the other column or the one named like a label; a choice the header leaves open is one error
    that names the columns to choose from."""
    paths = _imgs(tmp_path)
    rows = lambda f: "".join(f(i, p) for i, p in enumerate(paths))  # noqa: E731
    tags = ["猫;狗", "猫"]
    (tmp_path / "t.csv").write_text("source,image_id,tags\n" + rows(lambda i, p: f"相机A,{p},{tags[i % 2]}\n"),
                                    encoding="utf-8")
    s = _read(tmp_path / "t.csv")
    assert s.multi and s.classes == ["狗", "猫"] and s.targets.tolist()[:2] == [[1, 1], [0, 1]]
    assert "image files in column 'image_id', labels in 'tags'" in capsys.readouterr().out
    (tmp_path / "two.csv").write_text("label,path\n" + rows(lambda i, p: f"{'ab'[i % 2]},{p}\n"))
    assert _read(tmp_path / "two.csv").targets.tolist() == [0, 1, 0, 1, 0, 1]
    (tmp_path / "open.csv").write_text("source,image_id,kind\n" + rows(lambda i, p: f"x,{p},{'ab'[i % 2]}\n"))
    with pytest.raises(TuduiError, match=r"column 'image_id' of its header \(source,image_id,kind\) holds the image "
                                         r"files; name the label column: --csv-columns image_id LABEL, LABEL one of "
                                         r"source, kind"):
        _read(tmp_path / "open.csv")
    assert _read(tmp_path / "open.csv", columns=["image_id", "kind"]).classes == ["a", "b"]


@pytest.mark.parametrize("cells,column", [(["cat|dog", "cat", "dog"], "label"), (["cat;dog", "cat", "dog"], "label"),
                                          (["cat dog", "cat", "dog"], "label"), (["cat dog", "cat dog", "dog"], "tags")])
def test_several_names_in_a_label_cell_make_multi_hot_targets(tmp_path, cells, column):
    paths = _imgs(tmp_path, 3)
    (tmp_path / "m.csv").write_text(f"path,{column}\n" + "".join(f"{p},{c}\n" for p, c in zip(paths, cells)))
    s = _read(tmp_path / "m.csv")
    assert s.multi and s.classes == ["cat", "dog"] and s.targets.dtype == np.float32
    assert s.targets.tolist()[0] == [1, 1] and s.targets.tolist()[2] == [0, 1]


def test_a_class_name_with_a_space_stays_one_class(tmp_path):
    paths = _imgs(tmp_path, 4)
    names = ["golden retriever", "cat", "golden retriever", "cat"]
    (tmp_path / "s.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in zip(paths, names)))
    s = _read(tmp_path / "s.csv")
    assert not s.multi and s.classes == ["cat", "golden retriever"]
    names = ["Ankle boot|Bag", "Bag", "Ankle boot", "T-shirt/top"]  # `|` separates: spaces belong to the names
    (tmp_path / "m.csv").write_text("path,labels\n" + "".join(f"{p},{c}\n" for p, c in zip(paths, names)))
    assert _read(tmp_path / "m.csv", task="multi").classes == ["Ankle boot", "Bag", "T-shirt/top"]


def test_a_multi_hot_csv_names_its_classes_in_the_header(tmp_path):
    paths = _imgs(tmp_path, 4)
    (tmp_path / "h.csv").write_text("fname,猫,dog,bird\n" + "".join(
        f"{p},{i % 2},{(i // 2) % 2},0\n" for i, p in enumerate(paths)))
    s = _read(tmp_path / "h.csv")
    assert s.multi and s.classes == ["猫", "dog", "bird"]
    assert s.targets.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]
    assert s.counts().tolist() == [2, 2, 0]


def test_label_files_of_several_lines_are_several_labels(tmp_path):
    for i, text in enumerate(["cat\ndog\n", "cat\n", "dog\n"]):
        Image.new("L", (8, 8)).save((tmp_path / "pets_image").mkdir(exist_ok=True) or tmp_path / "pets_image" / f"{i}.png")
        (tmp_path / "pets_label").mkdir(exist_ok=True)
        (tmp_path / "pets_label" / f"{i}.txt").write_text(text)
    s = _read(tmp_path)
    assert s.multi and s.classes == ["cat", "dog"] and s.targets.tolist() == [[1, 1], [1, 0], [0, 1]]


class Items(torch.utils.data.Dataset):
    def __init__(self, labels, classes=None):
        self.labels, self.classes = labels, classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return np.full((8, 8), i % 25 * 10, dtype=np.uint8), self.labels[i]


def test_a_dataset_of_name_lists_or_multi_hot_vectors_is_multi_label():
    train, _, _ = load_splits([Items([["cat", "dog"], ["dog"], [], ["cat"]] * 3)], val_split=0)
    assert train.multi and train.classes == ["cat", "dog"] and train.targets.tolist()[:3] == [[1, 1], [0, 1], [0, 0]]
    vec = [torch.tensor([1, 0, 1]), torch.tensor([0, 1, 0]), torch.tensor([1.0, 1.0, 0.0])] * 3
    train, _, _ = load_splits([Items(vec, classes=["a", "b", "c"])], val_split=0)
    assert train.multi and train.classes == ["a", "b", "c"] and train.targets.tolist()[0] == [1, 0, 1]


def test_a_multi_label_holdout_keeps_every_class_on_both_sides(tmp_path):
    labels = [["a"]] * 40 + [["a", "rare"]] * 4 + [["b"]] * 40 + [[]] * 10
    train, val, _ = load_splits([Items(labels)], val_split=0.25, seed=1)
    assert train.multi and val.multi and len(train) + len(val) == len(labels)
    assert (val.counts() > 0).all() and (train.counts() > 0).all()  # the rare class reaches validation too


def test_task_auto_single_and_multi(tmp_path):
    paths = _imgs(tmp_path, 4)
    (tmp_path / "s.csv").write_text("path,label\n" + "".join(f"{p},{'ab'[i % 2]}\n" for i, p in enumerate(paths)))
    train, _, _ = load_splits([str(tmp_path / "s.csv")], val_split=0, reading=LabelReading.of(task="multi"))
    assert train.multi and train.targets.tolist() == [[1, 0], [0, 1], [1, 0], [0, 1]]  # one-hot rows
    assert not _read(tmp_path / "s.csv").multi


@pytest.mark.parametrize("cells,kw,message", [
    (["cat", "", "dog"], {"task": "single"}, r"m.csv:3 has no label; --task single takes exactly one label"),
    (["cat|dog", "cat", "dog"], {"task": "single"}, r"m.csv:2 has 2 labels \(cat\|dog\); --task single"),
    (["cat|dog", "cat", "bird"], {"classes": ["cat", "dog"]},
     r"m.csv:4 has the label 'bird', which is not one of the classes \(cat, dog\); fix the label or add it to --classes"),
])
def test_labels_that_cannot_be_trained_are_one_clear_error(tmp_path, cells, kw, message):
    paths = _imgs(tmp_path, 3)
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in zip(paths, cells)))
    with pytest.raises(TuduiError, match=message):
        _read(tmp_path / "m.csv", **kw)


def test_a_multi_hot_vector_of_the_wrong_length_is_refused():
    with pytest.raises(TuduiError, match=r"item 1 of Items has a multi-hot vector of length 2; there are 3 classes"):
        load_splits([Items([[1, 0, 1], [1, 0], [0, 1, 1]], classes=["a", "b", "c"])], val_split=0)
    with pytest.raises(TuduiError, match=r"--task takes one of auto, single, multi, got 'both'"):
        LabelReading.of(task="both")


def test_data_check_reports_label_cardinality_counts_pairs_and_images_with_no_label(tmp_path):
    from tudui.data.check import check_data, format_report

    paths = _imgs(tmp_path, 6)
    cells = ["cat|dog", "cat", "", "cat|dog|bird", "dog", ""]
    (tmp_path / "m.csv").write_text("path,labels\n" + "".join(f"{p},{c}\n" for p, c in zip(paths, cells)))
    report = check_data([str(tmp_path / "m.csv")])
    s = report.splits[0]
    assert s.multi_label and s.images == 6 and s.no_label == 2 and s.most_labels == 3
    assert s.classes == {"bird": 1, "cat": 3, "dog": 3} and s.cardinality == pytest.approx(7 / 6)
    assert s.pairs == {"cat + dog": 2, "bird + cat": 1, "bird + dog": 1}
    assert "multi-label: 1.17 labels per image on average (at most 3), 2 image(s) with no label" in format_report(report)


@pytest.mark.parametrize("cells,args,message", [
    (["cat", "", "dog"], ["--task", "single"], "has no label; --task single takes exactly one label per image"),
    (["cat|dog", "cat", "dog"], ["--task", "single"], "has 2 labels (cat|dog); --task single"),
    (["cat", "bird", "dog"], ["--classes", "cat", "dog"], "has the label 'bird', which is not one of the classes"),
    (["cat", "dog", "cat"], ["--threshold", "1.5"], "--threshold must be in [0, 1] (a probability), got 1.5"),
    (["cat", "dog", "cat"], ["--csv-columns", "path"], "--csv-columns takes the path column, then the label column"),
])
def test_bad_label_input_is_one_error_line_and_exit_2(tmp_path, capsys, cells, args, message):
    from tudui.cli import main

    paths = _imgs(tmp_path, 3)
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in zip(paths, cells)))
    code = main(["train", "--data", str(tmp_path / "m.csv"), "--project", str(tmp_path / "runs"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_data_check_reads_a_wider_csv_by_the_columns_named(tmp_path, capsys):
    from tudui.cli import main

    paths = _imgs(tmp_path, 4)
    (tmp_path / "w.csv").write_text("n,file,tags\n" + "".join(f"{i},{p},{'a|b' if i % 2 else 'a'}\n"
                                                            for i, p in enumerate(paths)))
    main(["data", "check", str(tmp_path / "w.csv"), "--csv-columns", "file", "tags"])
    out = capsys.readouterr().out
    assert "4 readable images, 2 classes" in out and "multi-label: 1.50 labels per image" in out
