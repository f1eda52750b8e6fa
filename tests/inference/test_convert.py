"""Safe loading: pickled whole models are refused, malicious pickles never run, `tudui convert --trust` works."""
from __future__ import annotations

import torch
import torch.nn as nn

import pytest

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
