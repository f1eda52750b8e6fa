"""A learner's own nn.Module, Dataset and torch.save(model) file, through the CLI and the library."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import forkserver


COURSE = Path(__file__).resolve().parents[1] / "fixtures" / "course"


@pytest.fixture(scope="module")
def ants_bees(tmp_path_factory, fmnist):
    """The course's hymenoptera layout on real images: train/ants (trousers), train/bees (sneakers), 40 each."""
    train, _ = fmnist
    root = tmp_path_factory.mktemp("hymenoptera") / "train"
    for name, cls in (("ants", "Trouser"), ("bees", "Sneaker")):
        idx = np.flatnonzero(train.targets == train.classes.index(cls))[:40]
        (root / name).mkdir(parents=True)
        from PIL import Image

        for i in idx:
            Image.fromarray(train.images[i][..., 0]).save(root / name / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """model.py and mydata.py copied into a folder with spaces and Chinese in its name, as a learner's might be."""
    d = tmp_path_factory.mktemp("code") / "我的 代码"
    d.mkdir()
    for f in ("model.py", "mydata.py"):
        shutil.copy(COURSE / f, d / f)
    return d


@pytest.fixture(scope="module")
def tudui_run(tmp_path_factory, fmnist_folders, user_files, cli_module):
    project = tmp_path_factory.mktemp("own_model_runs")
    r = cli_module("train", "--model", f"{user_files / 'model.py'}:Tudui", "--data", fmnist_folders, "--channels",
                   "3", "--img-size", "32", "--epochs", "1", "--no-plots", "--no-tensorboard", "--project", project,
                   "--name", "tudui")
    assert r.returncode == 0, r.stderr
    assert "model.py was run as a script" not in r.stdout + r.stderr  # its __main__ block did not run
    return project / "tudui"


@pytest.fixture(scope="module")
def cli_module():
    from tests.conftest import run_cli

    return run_cli


def test_cli_trains_own_class_then_predicts_and_exports_elsewhere(tudui_run, fmnist_folders, tmp_path, cli):
    ckpt = torch.load(tudui_run / "best.pt", weights_only=True)
    src = ckpt["arch"]["source"]
    assert src["name"] == "Tudui" and src["path"].endswith("model.py") and len(src["sha256"]) == 64
    assert (tudui_run / src["relpath"]).resolve() == Path(src["path"])
    assert ckpt["arch"]["num_classes"] == 10 and ckpt["data"]["channels"] == 3

    elsewhere = tmp_path / "another dir"
    elsewhere.mkdir()
    r = cli("predict", tudui_run / "best.pt", fmnist_folders / "val" / "Trouser", "--topk", "2", "--json",
            cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    preds = json.loads(r.stdout)
    assert len(preds) == 20 and all(p["error"] is None and len(p["predictions"]) == 2 for p in preds)
    r = cli("export", tudui_run / "best.pt", "--format", "onnx", "--out", elsewhere / "tudui.onnx", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert "-> ok" in r.stdout and (elsewhere / "tudui.onnx").is_file()
    # The ONNX file needs no Python code: it predicts what the checkpoint predicts.
    r2 = cli("predict", elsewhere / "tudui.onnx", fmnist_folders / "val" / "Trouser", "--topk", "2", "--json")
    onnx_preds = json.loads(r2.stdout)
    assert [p["predictions"][0]["class"] for p in onnx_preds] == [p["predictions"][0]["class"] for p in preds]


def test_moved_and_changed_model_file(tudui_run, user_files, fmnist_folders, tmp_path, cli):
    moved_run = tmp_path / "run"
    shutil.copytree(tudui_run, moved_run)  # the run moves; the file's absolute path is still valid
    original = user_files / "model.py"
    hidden = user_files / "model.py.bak"
    original.rename(hidden)
    try:
        r = cli("predict", moved_run / "best.pt", fmnist_folders / "val" / "Bag")
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
        assert "--model-file" in r.stderr and "tudui export" in r.stderr
        changed = tmp_path / "model_v2.py"
        changed.write_text(hidden.read_text() + "\n# edited after training\n")
        r = cli("predict", moved_run / "best.pt", fmnist_folders / "val" / "Bag", "--model-file", changed)
        assert r.returncode == 0, r.stderr
        assert "warning:" in r.stderr and "changed since the model was trained" in r.stderr
        r = cli("summary", moved_run, "--model-file", changed)
        assert r.returncode == 0 and "Linear" in r.stdout
    finally:
        hidden.rename(original)


def test_library_trains_course_mydata_added_together(ants_bees, user_files, tmp_path):
    sys.path.insert(0, str(user_files))
    try:
        from model import Tudui
        from mydata import MyData
    finally:
        sys.path.remove(str(user_files))
    import tudui

    ants, bees = MyData(str(ants_bees), "ants"), MyData(str(ants_bees), "bees")
    result = tudui.train(model=Tudui(num_classes=2), data=ants + bees, channels=3, img_size=32, epochs=2,
                         plots=False, tensorboard=False, project=str(tmp_path), name="lib")
    assert result.spec.classes == ["ants", "bees"]
    assert result.val["top1"] > 0.8  # trousers and sneakers: an easy pair
    predictor = tudui.Predictor.from_path(result.best)
    # a sneaker filed under bees and a trouser under ants: each predicted as its own folder's class
    files = [str(sorted((ants_bees / name).iterdir())[0]) for name in ("bees", "ants")]
    preds = predictor.predict(files, topk=2)
    assert [p.error for p in preds] == [None, None]
    assert [p.label for p in preds] == ["bees", "ants"]


def test_cli_data_from_a_file_function(ants_bees, user_files, tmp_path, cli):
    r = cli("train", "--model", f"{user_files / 'model.py'}:Tudui", "--data", f"{user_files / 'mydata.py'}:make_train_set",
            "--channels", "3", "--img-size", "32", "--epochs", "1", "--no-plots", "--no-tensorboard",
            "--project", tmp_path, "--name", "d", env={"COURSE_DATA": str(ants_bees)})
    assert r.returncode == 0, r.stderr
    assert "2 classes" in r.stdout
    assert torch.load(tmp_path / "d" / "best.pt", weights_only=True)["data"]["classes"] == ["ants", "bees"]


def _course_pickle(tmp_path: Path, images: list[Path]) -> Path:
    """tudui_9.pth written by a script run as __main__ (its class is __main__.Tudui), plus its probabilities."""
    out = tmp_path / "learner"
    out.mkdir()
    r = forkserver.run([sys.executable, str(COURSE / "save_whole_model.py"), str(out), *map(str, images)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("target", ["cifar-net", "file"])
def test_convert_course_pickle_predicts_as_the_original(tmp_path, fmnist_folders, user_files, cli, target):
    images = sorted((fmnist_folders / "val").rglob("*.jpg"))[::10][:16]
    out = _course_pickle(tmp_path, images)
    model = "cifar-net" if target == "cifar-net" else f"{user_files / 'model.py'}:Tudui"
    classes = sorted(p.name for p in (fmnist_folders / "val").iterdir())
    r = cli("convert", out / "tudui_9.pth", "--trust", "--model", model, "--classes", *classes,
            "--out", out / "tudui_9.pt")
    assert r.returncode == 0, r.stderr
    assert "__main__.Tudui" in r.stdout and "model1.7.weight -> " in r.stdout  # the stand-in and the mapping
    from tudui import Predictor

    predictor = Predictor.from_path(out / "tudui_9.pt", device="cpu")
    got = predictor.probabilities(predictor.preprocess([str(p) for p in images])).numpy()
    want = np.load(out / "probs.npy")
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() <= 1e-5


def test_convert_refuses_weights_that_do_not_line_up(tmp_path, fmnist_folders, cli):
    out = _course_pickle(tmp_path, sorted((fmnist_folders / "val").rglob("*.jpg"))[:1])
    r = cli("convert", out / "tudui_9.pth", "--trust", "--model", "mnist-cnn", "--num-classes", "10",
            "--out", out / "x.pt")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert "do not match --model mnist-cnn: tensor 1 is model1.0.weight (32, 3, 5, 5)" in r.stderr
    assert not (out / "x.pt").exists()


def test_own_model_serves(tudui_run, fmnist_folders):
    from fastapi.testclient import TestClient

    from tudui import Predictor
    from tudui.inference.server import create_app

    client = TestClient(create_app(Predictor.from_path(tudui_run, device="cpu")))
    image = next((fmnist_folders / "val" / "Sneaker").iterdir())
    r = client.post("/predict", files={"file": (image.name, image.read_bytes(), "image/jpeg")})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 5
    assert client.get("/info").json()["arch"].endswith("model.py:Tudui")


BLITZ_SCRIPT = '''"""train_main.py as a learner writes it: the class, then its training, with no __main__ guard."""
import tudui
from torch import nn

HIDDEN = 32


class Tudui(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, num_classes))

    def forward(self, x):
        return self.net(x)


print("train_main.py is training")
with open("trainings.txt", "a") as f:
    f.write("one training\\n")
tudui.train(model=Tudui(), data="digits", epochs=1, subset=100, project="runs", name="x", plots=False,
            tensorboard=False)
'''


def test_predicting_does_not_rerun_a_training_script(tmp_path, capsys, monkeypatch):
    """`python train_main.py`, then `tudui predict runs/x/best.pt`: the prediction rebuilds Tudui from the script
    without running the script (no second training, no script output); the training said so when it started."""
    from PIL import Image

    from tudui.cli import main as tudui_main

    code = tmp_path / "我的 code"
    code.mkdir()
    (code / "train_main.py").write_text(BLITZ_SCRIPT)
    env = os.environ.copy() | {"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    r = forkserver.run([sys.executable, "train_main.py"], cwd=code, capture_output=True, text=True, timeout=300,
                       env=env)  # as the learner runs it: the script is __main__
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "top-level statement" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {code / 'train_main.py'} runs 3 top-level"), \
        r.stderr
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "digit.png")
    # predict in this process (a subprocess would add only torch's import time): the file is loaded afresh, from the
    # script's folder as the learner would run it (a rerun script would write there, not into the checkout)
    monkeypatch.chdir(code)
    assert tudui_main(["predict", str(code / "runs" / "x" / "best.pt"), str(tmp_path / "digit.png")]) == 0
    out, err = capsys.readouterr()
    assert "digit.png" in out and "is training" not in out + err
    assert (code / "trainings.txt").read_text() == "one training\n"
    assert [p.name for p in (code / "runs").iterdir()] == ["x"]
