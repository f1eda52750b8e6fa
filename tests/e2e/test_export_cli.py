"""`tudui export`, then `tudui predict` / `tudui eval` on the .onnx: same answers as the checkpoint.

The export itself runs as a user runs it (a subprocess, in the session's `tiny_onnx` fixture); predict and eval
on its file then run in-process (`tudui.cli.main`), since other tests already run those commands as subprocesses.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

from tudui.cli import main as tudui_main  # noqa: E402


def test_export_then_predict_and_eval_the_onnx(tiny_model, tiny_onnx, tmp_path, capsys):
    import tudui
    from tudui.data.export_images import export_images
    from tudui.inference import Predictor

    onnx, r = tiny_onnx
    assert "max |logit diff|" in r.stdout and "-> ok" in r.stdout and f"wrote {onnx}" in r.stdout and onnx.is_file()

    files = export_images("digits", tmp_path / "imgs", "test", 6, "png", None, 0)
    assert tudui_main(["predict", str(onnx), str(tmp_path / "imgs"), "--topk", "3", "--json"]) == 0
    got = {p["source"]: p["predictions"] for p in json.loads(capsys.readouterr().out)}
    want = Predictor.from_path(tiny_model, device="cpu").predict(sorted(map(str, files)), topk=3)
    assert len(got) == len(want) == 6
    for p in want:
        assert [g["class"] for g in got[p.source]] == [c for c, _ in p.topk]
        assert all(abs(g["probability"] - q) < 1e-5 for g, (_, q) in zip(got[p.source], p.topk))

    assert tudui_main(["eval", str(onnx), "--data", "digits", "--json", "--out", str(tmp_path / "eval")]) == 0
    onnx_metrics = json.loads(capsys.readouterr().out)
    ckpt_metrics = tudui.evaluate(str(tiny_model), "digits", device="cpu")
    assert onnx_metrics["n"] == ckpt_metrics["n"] == 359 and onnx_metrics["confusion"] == ckpt_metrics["confusion"]
    assert abs(onnx_metrics["loss"] - ckpt_metrics["loss"]) < 1e-5


def test_export_option_mistake_is_one_line_exit_2(tiny_model, tmp_path, capsys):
    # In-process: `tudui export` itself runs as a subprocess in the tiny_onnx fixture.
    assert tudui_main(["export", str(tiny_model), "--format", "safetensors", "--opset", "17", "--out",
                       str(tmp_path / "w.safetensors")]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--opset" in lines[0] and "onnx only" in lines[0]
    assert out == "" and list(tmp_path.iterdir()) == []  # nothing written
