"""The complete routine through the `tudui` command, as a user runs it, on real Fashion-MNIST images.

Each command runs at least once in a subprocess; repeats of a command run in-process (`tudui.cli.main`), which
saves the seconds a new Python spends importing torch.
"""
import json
from pathlib import Path

import pytest
from PIL import Image

from tudui.cli import main as tudui_main


def _ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_class_folders_train_eval_predict(cli, fmnist_folders, tmp_path, capsys):
    _ok(cli("train", "--data", fmnist_folders, "--model", "fast", "--epochs", "4", "--batch-size", "64",
            "--project", tmp_path, "--name", "folders"))
    run = tmp_path / "folders"
    assert (run / "best.pt").exists() and (run / "results.csv").read_text().count("\n") == 5
    capsys.readouterr()
    assert tudui_main(["eval", str(run / "best.pt"), "--data", str(fmnist_folders), "--split", "val", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 200 and metrics["top1"] > 0.3  # 4 short epochs on 600 images; chance is 0.1
    # Evaluated as in training (flip TTA is saved with the model): the same figure the run reported.
    run_val = json.loads((run / "metrics.json").read_text())["val"]
    assert metrics["tta"] is True and metrics["top1"] == pytest.approx(run_val["top1"])
    assert tudui_main(["eval", str(run / "best.pt"), "--data", str(fmnist_folders), "--split", "val", "--json",
                       "--no-tta"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["tta"] is False and plain["n"] == 200
    assert tudui_main(["eval", str(run), "--data", str(fmnist_folders), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "rows: true class" in out
    assert tudui_main(["predict", str(run / "best.pt"), str(fmnist_folders / "val" / "Bag"), "--topk", "3",
                       "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 20 and all(len(p["predictions"]) == 3 for p in preds)


def test_label_file_layout(fmnist, tmp_path, capsys):
    train, _ = fmnist
    root = tmp_path / "course"
    for c, name in [(1, "trouser"), (7, "sneaker")]:
        idx = [i for i in range(len(train)) if train.targets[i] == c][:40]
        (root / f"{name}_image").mkdir(parents=True)
        (root / f"{name}_label").mkdir()
        for i in idx:
            Image.fromarray(train.images[i][..., 0]).save(root / f"{name}_image" / f"{i}.jpg")
            (root / f"{name}_label" / f"{i}.txt").write_text(name)
    assert tudui_main(["train", "--data", str(root), "--model", "mnist-cnn", "--epochs", "2", "--batch-size", "16",
                       "--optimizer", "adam", "--lr", "0.003", "--no-plots", "--project", str(tmp_path),
                       "--name", "lab"]) == 0
    capsys.readouterr()
    assert tudui_main(["eval", str(tmp_path / "lab"), "--data", str(root), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] >= 0.75  # trousers vs sneakers is an easy pair


def test_fashion_mnist_subset_reaches_80_percent_then_predicts_pngs(cli, fmnist, tmp_path):
    r = _ok(cli("train", "--data", "fashion-mnist", "--subset", "4000", "--epochs", "2", "--project", tmp_path,
                "--name", "fm"))
    metrics = json.loads((tmp_path / "fm" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 10000 and metrics["test"]["top1"] >= 0.80, r.stdout
    assert tudui_main(["data", "export", "fashion-mnist", "--split", "test", "--limit", "40", "--out",
                       str(tmp_path / "pngs")]) == 0  # in-process: the child processes are train and predict
    r = _ok(cli("predict", tmp_path / "fm" / "best.pt", tmp_path / "pngs", "--json"))
    preds = json.loads(r.stdout)
    hits = sum(Path(p["source"]).parent.name == p["predictions"][0]["class"].replace("/", "_") for p in preds)
    assert len(preds) == 40 and hits >= 30


@pytest.mark.parametrize("args, message, subprocess", [
    (["train", "--data", "/no/such/folder"], "no such file or folder", True),
    (["train", "--data", "digits", "--model", "resnet19"], "did you mean resnet18", False),
    (["predict", "/no/such.pt", "x.png"], "no such file or folder", False),
    (["eval", str(Path(__file__).resolve().parents[2] / "README.md"), "--data", "digits"],
     "not a readable PyTorch file", False),
])
def test_user_mistakes_are_one_line_exit_2(cli, args, message, subprocess, capsys, monkeypatch, tmp_path):
    # in tmp_path: a train that stops with an error claims runs/exp in the working folder before it removes it again,
    # and in the checkout that folder came and went under the other test workers' checkout check
    if subprocess:  # as a user sees it
        r = cli(*args, cwd=tmp_path)
        rc, err = r.returncode, r.stderr
    else:
        monkeypatch.chdir(tmp_path)
        rc, err = tudui_main(args), capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_eval_scores_every_image_of_a_folder_holding_some_classes(tiny_model, tmp_path, capsys):
    """A folder of class folders with no train/val/test folders is scored whole (`--split all`, its default), and
    macro-F1 and balanced accuracy are over the classes it holds (scikit-learn's f1_score(labels=present) and
    balanced_accuracy_score), the others named as absent."""
    import numpy as np
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from tudui.data.sources import load_named

    digits = load_named("digits", False)
    for c in (0, 3, 7):
        (tmp_path / "mine" / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(digits.targets == c)[:12]:
            Image.fromarray(digits.images[i][..., 0]).save(tmp_path / "mine" / str(c) / f"{i}.png")
    args = ["eval", str(tiny_model), "--data", str(tmp_path / "mine"), "--device", "cpu", "--out", str(tmp_path)]
    assert tudui_main(args + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["split"] == "all" and r["n"] == 36  # every image, not a 10% hold-out
    cm = np.array(r["confusion"])
    truth, pred = np.nonzero(cm)
    y_true, y_pred = np.repeat(truth, cm[truth, pred]), np.repeat(pred, cm[truth, pred])
    assert r["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 3, 7], average="macro"), abs=1e-9)
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred), abs=1e-9)
    assert [r["classes"][i] for i in r["absent"]] == ["1", "2", "4", "5", "6", "8", "9"]
    assert tudui_main(args) == 0
    out = capsys.readouterr().out
    assert f"balanced accuracy {r['balanced_accuracy']:.2%}  macro-F1 {r['macro_f1']:.3f}" in out
    assert "[all]: 36 images" in out and "(over the 3 classes present; no images of 7: 1, 2, 4, 5, 6, 8, 9)" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.split("rows: true class")[0].splitlines()[3:] if line}
    assert rows["9"][1:] == ["-", "-", "0"] and rows["0"][1:3] != ["-", "-"]  # an absent class has no recall or F1
