"""`tudui export`, then `tudui predict` / `tudui eval` on the .onnx, as a user runs them: same answers as the checkpoint."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")


def test_export_then_predict_and_eval_the_onnx(tiny_model, tmp_path, cli):
    import tudui
    from tudui.data.export_images import export_images
    from tudui.inference import Predictor

    r = cli("export", tiny_model, "--format", "onnx", "--dynamic-batch", "--out", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    assert "max |logit diff|" in r.stdout and "-> ok" in r.stdout and (tmp_path / "m.onnx").is_file()

    files = export_images("digits", tmp_path / "imgs", "test", 6, "png", None, 0)
    r = cli("predict", tmp_path / "m.onnx", tmp_path / "imgs", "--topk", "3", "--json")
    assert r.returncode == 0, r.stderr
    got = {p["source"]: p["predictions"] for p in json.loads(r.stdout)}
    want = Predictor.from_path(tiny_model, device="cpu").predict(sorted(map(str, files)), topk=3)
    assert len(got) == len(want) == 6
    for p in want:
        assert [g["class"] for g in got[p.source]] == [c for c, _ in p.topk]
        assert all(abs(g["probability"] - q) < 1e-5 for g, (_, q) in zip(got[p.source], p.topk))

    r = cli("eval", tmp_path / "m.onnx", "--data", "digits", "--json")
    assert r.returncode == 0, r.stderr
    onnx_metrics, ckpt_metrics = json.loads(r.stdout), tudui.evaluate(str(tiny_model), "digits", device="cpu")
    assert onnx_metrics["n"] == ckpt_metrics["n"] and onnx_metrics["confusion"] == ckpt_metrics["confusion"]
    assert abs(onnx_metrics["loss"] - ckpt_metrics["loss"]) < 1e-5


def test_export_option_mistake_is_one_line_exit_2(tiny_model, cli):
    r = cli("export", tiny_model, "--format", "safetensors", "--opset", "17")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
