"""A user's view: `tudui train` leaves event files and pictures; `tudui eval` draws the same confusion matrix;
`tudui summary` explains the CIFAR-10 net; `tudui info` reports the environment."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import colored_pixels, dark_fraction
from tudui.cli import main as tudui_main
from tudui.reporting.plots import read_confusion_csv


def _png_size(path):
    with Image.open(path) as im:
        im.load()
        return im.size


def test_train_pictures_and_eval_agree(tmp_path, cli, capsys):
    r = cli("train", "--data", "digits", "--model", "mnist-cnn", "--epochs", "1", "--batch-size", "64",
            "--subset", "400", "--project", tmp_path / "runs", "--name", "d", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "d"
    pictures = ["curves.png", "confusion_matrix.png", "mistakes.png", "train_batch.png"]
    listed = [line for line in r.stdout.splitlines() if line.startswith("pictures: ")]
    assert listed and all(str(run / p) in listed[0] for p in pictures)
    for p in pictures:
        w, h = _png_size(run / p)
        assert min(w, h) >= 200 and max(w, h) < 5000, (p, w, h)
    # Each shows something: coloured curves and matrix cells; grids of (grey, mostly black) digits.
    assert colored_pixels(run / "curves.png") > 300 and colored_pixels(run / "confusion_matrix.png") > 10_000
    assert dark_fraction(run / "train_batch.png") > 0.2 and dark_fraction(run / "mistakes.png") > 0.2
    assert list(run.glob("events.out.tfevents.*"))

    out = tmp_path / "eval"
    # `tudui eval` in-process (other tests run it as a subprocess)
    assert tudui_main(["eval", str(run / "best.pt"), "--data", "digits", "--split", "val", "--json", "--out",
                       str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # The run's picture was drawn from the best weights on the same held-out split that `tudui eval` re-creates.
    classes, run_cm = read_confusion_csv(run / "confusion_matrix.csv")
    eval_classes, eval_cm = read_confusion_csv(out / "eval_val_confusion_matrix.csv")
    assert classes == eval_classes == metrics["classes"]
    assert run_cm == eval_cm == metrics["confusion"]
    assert np.trace(np.array(run_cm)) / np.sum(run_cm) == pytest.approx(metrics["top1"])
    assert _png_size(out / "eval_val_confusion_matrix.png")[0] >= 400
    per_class = (out / "eval_val_per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,precision,recall,f1,support" and len(per_class) == 11


def test_summary_cli(cli, capsys):
    r = cli("summary", "cifar-net", "--input", "3x32x32")
    assert r.returncode == 0, r.stderr
    assert "145,578" in r.stdout and "floor((32 + 2*2 - 1*(5-1) - 1)/1 + 1) = 32" in r.stdout
    assert tudui_main(["summary", "cifar-net", "--input", "3x28x28", "--build-size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "expects 1024 input features but gets 576" in err and "3x32x32 fits" in err


def test_info(cli):
    r = cli("info", "--json")
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout)
    assert env["datasets"]["digits"] == "bundled with scikit-learn" and "torch" in env["versions"]


def test_eval_writes_its_reports_next_to_the_checkpoint(tiny_model, tmp_path, monkeypatch, capsys):
    """Without --out, `tudui eval CKPT` (or a run directory) writes its files beside the checkpoint, wherever the
    command runs from (docs/seeing-training.md); a folder name with a space and Chinese on purpose."""
    import shutil

    run = tmp_path / "my run 运行"
    run.mkdir()
    shutil.copy(tiny_model, run / "best.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert tudui_main(["eval", str(run / "best.pt"), "--data", "digits", "--split", "test", "--json"]) == 0
    out = capsys.readouterr()
    metrics = json.loads(out.out)
    written = {"eval_test_confusion_matrix.png", "eval_test_confusion_matrix.csv", "eval_test_per_class.csv",
               "eval_test_risk_coverage.png"}
    assert {p.name for p in run.iterdir()} == {"best.pt"} | written and list(elsewhere.iterdir()) == []
    assert out.err == "wrote " + ", ".join(str(run / n) for n in ("eval_test_confusion_matrix.png",
                                                                  "eval_test_confusion_matrix.csv",
                                                                  "eval_test_per_class.csv",
                                                                  "eval_test_risk_coverage.png")) + "\n"
    classes, cm = read_confusion_csv(run / "eval_test_confusion_matrix.csv")
    assert classes == metrics["classes"] and cm == metrics["confusion"] and np.sum(cm) == metrics["n"] == 359
    assert len((run / "eval_test_per_class.csv").read_text().splitlines()) == 1 + len(classes)

    assert tudui_main(["eval", str(run), "--data", "digits", "--split", "val"]) == 0  # the run directory itself
    assert "eval_val_per_class.csv" in capsys.readouterr().out
    assert {p.name for p in run.iterdir()} == {"best.pt"} | written | {n.replace("test", "val") for n in written}
    assert list(elsewhere.iterdir()) == []
