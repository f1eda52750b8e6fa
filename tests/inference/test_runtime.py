"""`tudui serve --runtime` (inference/runtime.py): a CPU checkpoint's forward pass runs on an ONNX Runtime copy proven
against PyTorch, with the same answers; PyTorch where asked, and where the copy cannot be made or proven."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("onnxruntime")

from tudui.core.errors import TuduiError  # noqa: E402
from tudui.data import DataSpec  # noqa: E402
from tudui.data.sources import load_named  # noqa: E402
from tudui.inference import formats, runtime  # noqa: E402
from tudui.inference.predictor import Predictor  # noqa: E402


def digits(n: int = 64) -> list[np.ndarray]:
    """Real 8x8 digits as the server's decoder gives them: (8, 8, 1) uint8 each."""
    return list(load_named("digits", False).images[:n])


def test_auto_runs_a_cpu_checkpoint_on_onnxruntime_with_pytorchs_answers(tiny_model, tmp_path):
    predictor = Predictor.from_path(tiny_model, device="cpu")
    x = predictor.batch(digits())
    want = predictor.probabilities(x)  # PyTorch's
    path, words = runtime.prepare(predictor, "auto", tmp_path)
    assert words == "onnxruntime" and path == tmp_path / runtime.ONNX_FILE and path.is_file()
    assert predictor.runtime == "torch"  # prepare alone changes nothing
    runtime.attach(predictor, path)
    assert isinstance(predictor.runner, formats.OnnxModule) and predictor.runtime == "onnxruntime"
    assert isinstance(predictor.model, nn.Module) and predictor.model is not predictor.runner  # /explain's gradients
    got = predictor.probabilities(x)
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert float((got - want).abs().max()) < 1e-5


def test_the_copy_averages_a_flip_tta_models_mirror_as_pytorch_does(tta_checkpoint, tmp_path):
    ckpt, image, _, tta = tta_checkpoint  # tta: PyTorch's mean of the image's and its mirror's logits, softmaxed
    predictor = Predictor.from_path(ckpt, device="cpu")
    runtime.attach(predictor, runtime.prepare(predictor, "auto", tmp_path)[0])
    assert predictor.runtime == "onnxruntime" and predictor.spec.flip_tta
    got = dict(predictor.predict([image], topk=10)[0].topk)
    assert np.allclose([got[c] for c in predictor.classes], tta, atol=1e-5)


def test_torch_keeps_pytorch_and_exports_are_run_as_they_are(tiny_model, tiny_onnx, tmp_path):
    predictor = Predictor.from_path(tiny_model, device="cpu")
    assert runtime.prepare(predictor, "torch", tmp_path) == (None, "torch")
    assert runtime.attach(predictor, None).runner is predictor.model
    onnx = Predictor.from_path(tiny_onnx[0])
    assert runtime.prepare(onnx, "auto", tmp_path) == (None, "onnxruntime")  # already ONNX Runtime: no copy
    assert list(tmp_path.iterdir()) == []


class PoolsToThree(nn.Module):
    """A net ONNX cannot take at 8 px: adaptive pooling from 8x8 to 3x3 (8 is not a multiple of 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(3), nn.Linear(36, 10)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_a_model_onnx_cannot_take_stays_on_pytorch_under_auto_and_is_one_error_line_when_asked(tmp_path):
    predictor = Predictor(PoolsToThree(), DataSpec([str(i) for i in range(10)], 8, 1, [0.5], [0.5]))
    path, words = runtime.prepare(predictor, "auto", tmp_path)
    assert path is None and words.startswith("torch: no ONNX Runtime copy (ONNX export failed"), words
    with pytest.raises(TuduiError) as e:
        runtime.prepare(predictor, "onnxruntime", tmp_path)
    assert str(e.value).startswith("--runtime onnxruntime: ONNX export failed") and "--runtime torch" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_copy_whose_logits_differ_is_not_used(tiny_model, tmp_path, monkeypatch):
    """The parity check guards the copy: ONNX Runtime logits 0.01 off PyTorch's (beyond `tudui export`'s
    tolerance) leave the server on PyTorch under auto."""
    real = formats.OnnxModule.forward
    monkeypatch.setattr(formats.OnnxModule, "forward", lambda self, x: real(self, x) + 0.01)
    predictor = Predictor.from_path(tiny_model, device="cpu")
    path, words = runtime.prepare(predictor, "auto", tmp_path)
    assert path is None and "parity check failed" in words, words
    with pytest.raises(TuduiError, match="parity check failed"):
        runtime.prepare(predictor, "onnxruntime", tmp_path)


def test_a_runtime_name_that_does_not_exist(tiny_model, capsys):
    from tudui.cli import main as tudui_main

    with pytest.raises(SystemExit) as e:  # argparse's own check of the choices, before the model is read
        tudui_main(["serve", str(tiny_model), "--runtime", "tensorrt"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--runtime" in err and "tensorrt" in err and "Traceback" not in err
