"""`tudui benchmark`: a row per format with figures that are the files' own, the machine line, and the verdict."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

import tudui  # noqa: E402
from tudui.cli import main as tudui_main  # noqa: E402
from tudui.inference.benchmark import Row, verdict  # noqa: E402


def test_benchmark_rows_on_the_tiny_model(digits_run, capsys):
    """Two formats, few timed passes (the figures' values are not the point here: what each row holds is)."""
    rc = tudui_main(["benchmark", str(digits_run.run_dir), "--formats", "pytorch", "onnx-int8", "--latency-runs", "5",
                     "--throughput-batches", "1", "--calib", "50", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out)
    assert result["machine"].startswith("machine: ") and "cores usable" in result["machine"]
    rows = {r["format"]: r for r in result["rows"]}
    assert list(rows) == ["pytorch", "onnx-int8"] and result["skipped"] == {}
    pt, q = rows["pytorch"], rows["onnx-int8"]
    assert abs(pt["top1"] - 100 * digits_run.val["top1"]) < 0.01 and pt["drop"] == 0  # the run's own val top-1
    assert abs(q["drop"] - (pt["top1"] - q["top1"])) < 1e-6
    assert pt["size_mb"] == pytest.approx(digits_run.best.stat().st_size / 2**20)
    assert 0 < q["size_mb"] < pt["size_mb"] / 3  # int8 weights: a quarter of fp32's bytes, and no optimizer state
    for r in rows.values():
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["images_per_s"] > 0
        assert 50 < r["peak_rss_mb"] < 4096  # a fresh Python with the runtime loaded, not this test process's peak
    assert result["ship"] in rows and result["why"]


def test_the_table_has_the_machine_line_above_it_and_a_verdict():
    from tudui.inference.benchmark import BenchmarkResult, format_table

    rows = [Row("pytorch", "best.pt", 0.5, 95.0, 0.0, 0.30, 0.9, 2000, 800),
            Row("onnx-int8", "m.onnx", 0.1, 93.0, 2.0, 0.05, 0.1, 9000, 300),
            Row("onnx", "m.onnx", 0.2, 95.0, 0.0, 0.08, 0.1, 12000, 300)]
    ship, why = verdict(rows, 1.0)
    assert ship == "onnx"  # int8 is faster but lost 2 points, above --max-drop 1
    assert "3.8x faster than PyTorch eager" in why
    assert verdict(rows, 2.5)[0] == "onnx-int8"
    text = format_table(BenchmarkResult("machine: test CPU", rows, {"openvino": "openvino is not installed"}, ship,
                                        why))
    lines = text.splitlines()
    assert lines[0] == "machine: test CPU" and lines[2].startswith("format")
    assert "openvino: not measured: openvino is not installed" in text and lines[-1].startswith("ship: onnx: ")


def test_an_unknown_format_is_one_error_line(tiny_model, capsys):
    assert tudui_main(["benchmark", str(tiny_model), "--formats", "onnx", "tflite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--formats takes one or more of pytorch" in err and "'tflite'" in err

