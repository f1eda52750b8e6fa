"""Safe loading: pickled whole models are refused, malicious pickles never run, `tudui convert --trust` works."""
from __future__ import annotations

import torch
import torch.nn as nn

import pytest

import tudui
from tudui.cli import main as tudui_main
from tudui.core.checkpoint import load_checkpoint, read_weights
from tudui.core.errors import TuduiError
from tudui.inference.predictor import Predictor
from tudui.models import create_model


class Tudui(nn.Module):
    """The course's way of writing the CIFAR-10 net: a Sequential inside an attribute (keys `model1.N.*`)."""

    def __init__(self) -> None:
        super().__init__()
        self.model1 = create_model("cifar-net", 10, 3, 32)

    def forward(self, x):
        return self.model1(x)


class Evil:
    """Unpickling this creates `marker` (a stand-in for any code an attacker wants run)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_whole_model_pickle_is_refused_with_an_explanation(tmp_path, capsys):
    path = tmp_path / "tudui_0.pth"
    torch.save(Tudui(), path)  # the course's torch.save(model, ...)
    for load in (load_checkpoint, read_weights):
        with pytest.raises(TuduiError, match=r"pickled Python objects.*tudui convert"):
            load(path)
    assert tudui_main(["predict", str(path), str(path)]) == 2
    assert "--trust" in capsys.readouterr().err


def test_malicious_pickle_does_not_run(tmp_path, capsys):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": Evil(marker)}, path)
    assert not marker.exists()
    with pytest.raises(TuduiError):
        load_checkpoint(path)
    with pytest.raises(TuduiError):
        read_weights(path)
    assert tudui_main(["convert", str(path), "--out", str(tmp_path / "o.pt"), "--model", "fast",
                       "--num-classes", "10"]) == 2  # no --trust: refused before unpickling
    assert "--trust" in capsys.readouterr().err
    assert tudui_main(["train", "--data", "digits", "--weights", str(path), "--epochs", "1"]) == 2
    assert not marker.exists()


def test_convert_trusted_course_model_matches_original(tmp_path, capsys):
    torch.manual_seed(0)
    model = Tudui().eval()
    src, out = tmp_path / "tudui_9.pth", tmp_path / "tudui_9.pt"
    torch.save(model, src)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert tudui_main(["convert", str(src), "--trust", "--out", str(out), "--model", "cifar-net",
                       "--classes", *classes]) == 0
    ckpt = load_checkpoint(out)  # weights_only=True
    assert ckpt["data"]["classes"] == classes and ckpt["data"]["channels"] == 3 and ckpt["arch"]["img_size"] == 32
    p = Predictor.from_path(out, device="cpu")
    x = torch.rand(2, 3, 32, 32)  # mean 0, std 1: the course's ToTensor() pixels
    with torch.no_grad():
        assert torch.allclose(p.probabilities(x), model(x).softmax(1), atol=1e-6)
    # wrong architecture: a clear message, not a traceback
    assert tudui_main(["convert", str(src), "--trust", "--out", str(tmp_path / "x.pt"), "--model", "mnist-cnn",
                       "--num-classes", "10"]) == 2
    assert "do not match" in capsys.readouterr().err


def test_safetensors_weights_load_and_convert(tmp_path):
    from safetensors.torch import save_file

    net = create_model("mnist-cnn", 10, 1, 28)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    state = read_weights(path)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert tudui_main(["convert", str(path), "--out", str(tmp_path / "w.pt"), "--model", "mnist-cnn",
                       "--num-classes", "10", "--mean", "0.5", "--std", "0.5"]) == 0
    assert load_checkpoint(tmp_path / "w.pt")["data"]["mean"] == [0.5]


def _hinted_command(err: str) -> list[str]:
    """The `tudui convert ...` command an error line suggests, as argv (without the leading `tudui`)."""
    import re
    import shlex

    return shlex.split(re.search(r"`tudui (convert [^`]*)`", err).group(1))


def test_predicting_a_state_dict_suggests_a_convert_command_that_works(tmp_path, capsys):
    """Was: 'use it with `tudui train --weights`', which does not predict anything."""
    from PIL import Image

    torch.save(create_model("fast", 3, 1, 28).state_dict(), tmp_path / "sd.pth")  # at fast's default size
    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    assert tudui_main(["predict", str(tmp_path / "sd.pth"), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert f"`tudui convert {tmp_path / 'sd.pth'} --model MODEL --num-classes 3 --out {tmp_path / 'sd.pt'}`" in err
    argv = [("fast" if a == "MODEL" else a) for a in _hinted_command(err)]  # MODEL: the one word the user adds
    assert tudui_main(argv) == 0
    assert tudui_main(["predict", str(tmp_path / "sd.pt"), str(tmp_path / "x.png")]) == 0


def test_a_pickled_models_hint_names_its_class_and_convert_names_the_input_that_fits(tmp_path, capsys, monkeypatch):
    """Was: `tudui convert x.pth --trust`, which fails for lack of --model and --out."""
    (tmp_path / "hint_model.py").write_text(
        "import torch.nn as nn\n"
        "class Tudui(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(64, 10)\n"
        "    def forward(self, x):\n        return self.fc(x.flatten(1))\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    torch.save(importlib.import_module("hint_model").Tudui(), "whole.pth")
    with pytest.raises(TuduiError) as e:
        load_checkpoint("whole.pth")
    hint = "`tudui convert whole.pth --trust --model hint_model.py:Tudui --num-classes N --out whole.pt`"
    assert hint in str(e.value)
    argv = [("10" if a == "N" else a) for a in _hinted_command(str(e.value))]
    assert tudui_main(argv) == 2  # built for 3x32x32 by default, the Linear takes 64 features: convert says which
    assert capsys.readouterr().err.strip().endswith("the model takes 1x8x8 inputs: add --channels 1 --img-size 8")
    with pytest.raises(TuduiError, match=r"the model takes 1x8x8 inputs: add channels=1 img_size=8$"):  # library call
        tudui.convert("whole.pth", "whole.pt", model="hint_model.py:Tudui", trust=True, num_classes=10)
    assert tudui_main(argv + ["--channels", "1", "--img-size", "8"]) == 0
    assert load_checkpoint("whole.pt")["data"]["img_size"] == 8
