"""A checkpoint or export names Python code; tudui runs it only with the user's consent.

The attack: a weights-only `.pt` (or a `.safetensors` sidecar) whose `arch.source.relpath` points at a model.py shipped
beside it, or whose `arch.name` is '/any/dir/model.py:Net'. Loading it must not import that file unless the user named
it (--model-file), trained with exactly its contents here, or passed --trust-code. The file here writes a marker from
its class body, which runs whenever the file is loaded (only a file's other top-level statements are skipped), so a
test sees whether it ran. Every test has its own trust store ($TUDUI_CACHE in its tmp_path).

Once consent is given, which of the file runs: a learner's script that defines the model and trains it at its top
level is rebuilt without rerunning the script, and its training says so when it starts.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from tudui.cli import main as tudui_main
from tudui.core.checkpoint import make_checkpoint, save_checkpoint
from tudui.core.errors import TuduiError
from tudui.data import DataSpec
from tudui.models import build_model

MODEL_PY = '''
import pathlib
import torch.nn as nn


class Net(nn.Module):
    pathlib.Path({marker!r}).write_text("this file ran")  # a class body runs whenever the file is loaded

    def __init__(self, num_classes, in_channels=1, img_size=8):
        super().__init__()
        self.fc = nn.Linear(in_channels * img_size * img_size, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
'''


class Twin(nn.Module):
    """The same layers as model.py's Net, built here so the test never imports the file itself."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 2)


def run(*args) -> int:
    return tudui_main([str(a) for a in args])


@pytest.fixture
def crafted(tmp_path, monkeypatch):
    """A stranger's download: best.pt + model.py side by side (arch.source.relpath), images, a fresh trust store."""
    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "download dir 下载"
    d.mkdir()
    marker = tmp_path / "MARKER"
    (d / "model.py").write_text(MODEL_PY.format(marker=str(marker)))
    arch = {"name": "Net", "num_classes": 2, "in_channels": 1, "img_size": 8, "kwargs": {},
            "source": {"path": "/nowhere/model.py", "relpath": "model.py", "name": "Net", "args": {},
                       "sha256": "0" * 64}}
    torch.manual_seed(0)
    spec = DataSpec(["a", "b"], 8, 1, [0.5], [0.25], True)
    save_checkpoint(make_checkpoint(Twin(), arch, spec.to_dict(), epoch=1), d / "best.pt")
    return d, marker, class_folders(tmp_path / "images"), arch


def class_folders(images: Path) -> Path:
    """images/a and images/b, three random 8x8 greyscale PNGs each."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (images / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(images / c / f"{i}.png")
    return images


def command(name: str, ckpt: Path, images: Path, tmp_path: Path) -> list:
    return {"predict": ["predict", ckpt, images / "a" / "0.png"],
            "eval": ["eval", ckpt, "--data", images, "--split", "train", "--workers", "0", "--cache", "off",
                     "--out", tmp_path / "eval"],
            "summary": ["summary", ckpt],
            # beside the checkpoint: the sidecar's relpath is then the same file, reloaded for the parity check
            "export": ["export", ckpt, "--format", "safetensors", "--out", ckpt.parent / "m.safetensors"],
            "serve": ["serve", ckpt, "--port", "0"]}[name]


def assert_refused(err: str, model_py: Path) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(model_py) in err and "--trust-code" in err and "--model-file" in err, err


@pytest.fixture
def no_listening(monkeypatch):
    """`tudui serve` stops where it would start listening: the model has loaded by then."""
    import tudui.inference.server as server

    def stop(*_a, **_k):
        raise TuduiError("stopped before listening")

    monkeypatch.setattr(server, "listen_socket", stop)


@pytest.mark.parametrize("cmd", ["predict", "eval", "summary", "export", "serve"])
def test_code_named_by_a_checkpoint_runs_only_with_consent(crafted, tmp_path, capsys, cmd, no_listening):
    d, marker, images, _ = crafted
    args = command(cmd, d / "best.pt", images, tmp_path)
    assert run(*args) == 2
    assert_refused(capsys.readouterr().err, d / "model.py")
    assert not marker.exists()  # refused before anything of the file ran

    ok = 2 if cmd == "serve" else 0  # serve gets past loading and stops where it would listen
    assert run(*args, "--trust-code") == ok
    err = capsys.readouterr().err
    assert marker.exists() and (cmd != "serve" or "stopped before listening" in err), err
    assert run(*args, "--model-file", d / "model.py") == ok, capsys.readouterr().err
    if cmd == "export":  # the reload of what it wrote (the sidecar names the same file) passed the same consent
        assert (d / "m.safetensors.json").is_file()


def test_the_library_takes_trust_code_too(crafted, tmp_path):
    import tudui
    from tudui.inference.server import create_app

    d, marker, images, _ = crafted
    with pytest.raises(TuduiError, match="--trust-code"):
        tudui.predict(d / "best.pt", [str(images)])
    with pytest.raises(TuduiError, match="not running"):
        tudui.Predictor.from_path(d, device="cpu")
    assert not marker.exists()
    predictor = tudui.Predictor.from_path(d, device="cpu", trust_code=True)
    from fastapi.testclient import TestClient

    assert TestClient(create_app(predictor)).get("/info").json()["classes"] == ["a", "b"]
    _, preds = tudui.predict(d / "best.pt", [str(images)], trust_code=True)
    assert len(preds) == 6 and all(p.error is None for p in preds)


def test_a_file_named_as_the_architecture_needs_consent(crafted, tmp_path, capsys):
    d, marker, images, arch = crafted
    arch = {k: v for k, v in arch.items() if k != "source"} | {"name": f"{d / 'model.py'}:Net"}
    save_checkpoint(make_checkpoint(Twin(), arch, DataSpec(["a", "b"], 8, 1, [0.5], [0.25]).to_dict()),
                    tmp_path / "named.pt")
    with pytest.raises(TuduiError, match="not running"):
        build_model(arch)  # the one place every checkpoint's and export's code goes through
    assert run("predict", tmp_path / "named.pt", images) == 2
    assert_refused(capsys.readouterr().err, d / "model.py")
    assert not marker.exists()
    assert run("predict", tmp_path / "named.pt", images, "--trust-code") == 0
    assert marker.exists()


def test_a_safetensors_sidecar_names_code_only_with_consent(crafted, tmp_path, capsys):
    from safetensors.torch import save_file

    d, marker, images, arch = crafted
    spec = DataSpec(["a", "b"], 8, 1, [0.5], [0.25])
    save_file({k: v.contiguous() for k, v in Twin().state_dict().items()}, str(d / "m.safetensors"))
    (d / "m.safetensors.json").write_text(json.dumps({"format": "tudui.export", **spec.to_dict(), "arch": arch}))
    assert run("predict", d / "m.safetensors", images) == 2
    assert_refused(capsys.readouterr().err, d / "model.py")
    assert not marker.exists()
    assert run("predict", d / "m.safetensors", images, "--model-file", d / "model.py") == 0
    assert marker.exists()


TRAIN = ("train", "--data", "digits", "--epochs", "1", "--subset", "200", "--no-plots", "--no-tensorboard")


def test_a_file_you_trained_with_runs_until_it_changes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path / "cache"))
    code = tmp_path / "code"
    code.mkdir()
    marker = tmp_path / "MARKER"
    model_py = code / "model.py"
    model_py.write_text(MODEL_PY.format(marker=str(marker)))
    assert run(*TRAIN, "--model", f"{model_py}:Net", "--project", tmp_path / "runs", "--name", "mine") == 0
    run_dir = tmp_path / "runs" / "mine"
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    capsys.readouterr()
    assert run("predict", run_dir, image) == 0  # trained with it here: no flag needed
    assert run("summary", run_dir) == 0

    model_py.write_text(model_py.read_text() + "\n# edited after training\n")  # new contents, not trained with
    marker.unlink()
    capsys.readouterr()
    assert run("predict", run_dir, image) == 2
    assert_refused(capsys.readouterr().err, model_py)
    assert not marker.exists()
    assert run("predict", run_dir, image, "--model-file", model_py) == 0  # named by the user: consent
    assert "changed since the model was trained" in capsys.readouterr().err


def test_a_file_you_converted_with_runs_without_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path / "cache"))
    model_py = tmp_path / "model.py"
    model_py.write_text(MODEL_PY.format(marker=str(tmp_path / "MARKER")))
    torch.save(Twin().state_dict(), tmp_path / "weights.pth")
    out = tmp_path / "converted" / "m.pt"
    assert run("convert", tmp_path / "weights.pth", "--model", f"{model_py}:Net", "--classes", "a", "b",
               "--channels", "1", "--img-size", "8", "--out", out) == 0, capsys.readouterr().err
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    assert run("predict", out, image) == 0, capsys.readouterr().err


def test_a_model_defined_outside_a_file_asks_for_model_file():
    arch = {"name": "Net", "num_classes": 2, "in_channels": 1, "img_size": 8, "kwargs": {},
            "source": {"name": "Net", "path": None, "args": {}}}  # trained from a notebook's class
    with pytest.raises(TuduiError, match="not defined in a file when it was trained; name a file that defines it "
                                         "with --model-file"):
        build_model(arch, base_dir="/tmp")


# A learner's train_main.py (the blitz's shape): the class, then its training at the top level with no
# `if __name__ == "__main__":` guard. Rebuilding Tudui must run the imports, constants and helper it needs, and none
# of the script: a marker file and a print stand in for the `tudui.train(model=Tudui(), ...)` call.
SCRIPT = '''"""train_main.py: the model and its training in one file."""
import pathlib
import torch
from torch import nn

try:
    import a_module_nobody_has
except ImportError:
    a_module_nobody_has = None

SIDE = 8
HIDDEN: int = 16
CLASSES = ["a", "b"]
NUM_CLASSES = len(CLASSES)
ACT = nn.ReLU


def hidden_width():
    return HIDDEN


class Tudui(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES, in_channels=1):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * SIDE * SIDE, hidden_width()), ACT(),
                                 nn.Linear(hidden_width(), num_classes))

    def forward(self, x):
        return self.net(x)


print("train_main.py is training")
pathlib.Path({marker!r}).write_text("trained again")
writer = open({marker!r}, "a")
for epoch in range(2):
    writer.write(f"epoch {{epoch}}")
model = Tudui()  # tudui.train(model=Tudui(), ...) in the real script
'''


class ScriptTwin(nn.Module):
    """train_main.py's Tudui, built here so the test itself never runs the file."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))


@pytest.fixture
def script_run(tmp_path, monkeypatch):
    """runs/x/best.pt of a Tudui trained by train_main.py (recorded as training records it), and images."""
    from tudui.models.user import source_record

    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path / "cache"))
    code = tmp_path / "课程 code"
    code.mkdir()
    marker = tmp_path / "MARKER"
    script = code / "train_main.py"
    script.write_text(SCRIPT.format(marker=str(marker)))
    run_dir = code / "runs" / "x"
    run_dir.mkdir(parents=True)
    arch = {"name": f"{script}:Tudui", "num_classes": 2, "in_channels": 1, "img_size": 8, "kwargs": {},
            "source": source_record(f"{script}:Tudui", {}, run_dir)}  # trained with here: no consent flag needed
    torch.manual_seed(0)
    twin = ScriptTwin()
    save_checkpoint(make_checkpoint(twin, arch, DataSpec(["a", "b"], 8, 1, [0.5], [0.25]).to_dict(), epoch=1),
                    run_dir / "best.pt")
    return run_dir, marker, class_folders(tmp_path / "images"), twin


@pytest.mark.parametrize("cmd", ["predict", "eval", "summary", "export", "serve"])
def test_rebuilding_a_model_runs_none_of_the_script_around_it(script_run, tmp_path, capsys, cmd, no_listening):
    run_dir, marker, images, _ = script_run
    capsys.readouterr()
    rc = run(*command(cmd, run_dir / "best.pt", images, tmp_path))
    out, err = capsys.readouterr()
    assert rc == (2 if cmd == "serve" else 0), err  # serve stops where it would listen, the model loaded
    assert not marker.exists(), "the script's top-level statements ran"
    assert "is training" not in out + err
    if cmd == "serve":
        assert "stopped before listening" in err
    if cmd == "predict":
        assert "0.png" in out


def test_a_rebuilt_model_is_the_trained_one(script_run):
    """The class, its constant, its helper and `len(CLASSES)` are there: the rebuilt net gives the twin's logits."""
    import tudui

    run_dir, marker, _, twin = script_run
    predictor = tudui.Predictor.from_path(run_dir, device="cpu")
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(predictor.model(x), twin.net(x), atol=1e-6)
    assert type(predictor.model).__name__ == "Tudui" and not marker.exists()


def test_training_warns_once_about_top_level_code_and_runs_none_of_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "MARKER"
    script = tmp_path / "train_main.py"
    script.write_text(SCRIPT.format(marker=str(marker)))
    assert run(*TRAIN, "--model", f"{script}:Tudui", "--project", tmp_path, "--name", "s") == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if "top-level statement" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"warning: {script} runs 5 top-level statement(s) when imported (line 32: "
                                  '`print("train_main.py is training")` and 4 more); ')
    assert "predict, eval, export, serve and summary" in warnings[0] and '__name__ == "__main__"' in warnings[0]
    assert "tudui export RUN --format onnx" in warnings[0]
    # the CLI's training loaded the file as predict will: none of the script ran
    assert not marker.exists() and "train_main.py is training" not in (out + err).splitlines()
