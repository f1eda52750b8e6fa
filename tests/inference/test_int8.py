"""int8 exports and the accuracy gate every export passes: refused above --max-drop, figures in the metadata, and
int8 files that answer like the fp32 model on real images (the shared digits run)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import tudui  # noqa: E402
from tudui.cli import main as tudui_main  # noqa: E402
from tudui.data.sources import load_named  # noqa: E402

IMAGES = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "images"  # real digits, PNG


def onnx_meta(path) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}


@pytest.fixture(scope="module")
def outlier_model(tiny_model, tmp_path_factory) -> Path:
    """The digits run's checkpoint with one outlier channel: channel 0 after the first BatchNorm is shifted by +1000
    and the next convolution ignores it (its weights for that channel are zero), so the fp32 function is the same
    but that activation's int8 range (one scale for the whole tensor) is ~200x too wide for the other channels.
    A real failure mode of per-tensor activation quantisation: int8 loses several points of top-1 here."""
    ckpt = torch.load(tiny_model, map_location="cpu", weights_only=True)
    ckpt["model"]["2.bias"][0] += 1000
    ckpt["model"]["4.weight"][:, 0] = 0
    path = tmp_path_factory.mktemp("outlier") / "best.pt"
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def int8_onnx(tiny_model, tmp_path_factory):
    """(int8 .onnx of the digits run, its ExportResult), calibrated on 100 training images, any batch size."""
    out = tmp_path_factory.mktemp("int8") / "m-int8.onnx"
    r = tudui.export(tiny_model, "onnx", out, int8=True, calib=100, dynamic_batch=True)
    return out, r


def test_the_gate_refuses_a_drop_above_max_drop_and_writes_one_below(outlier_model, tmp_path, capsys):
    forced = tudui.export(outlier_model, "onnx", tmp_path / "forced.onnx", int8=True, calib=100, max_drop=0,
                          force=True)
    drop = forced.accuracy.drop
    assert drop >= 2, forced.accuracy  # the outlier channel costs int8 points of top-1 on the validation split
    assert forced.accuracy.forced and onnx_meta(forced.path)["validation"]["forced"] is True

    out = tmp_path / "m.onnx"
    capsys.readouterr()
    rc = tudui_main(["export", str(outlier_model), "--int8", "--calib", "100", "--max-drop", f"{drop - 0.5:.2f}",
                     "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("error: onnx int8 export refused"), err
    assert f"{forced.accuracy.top1:.2f}%" in err and f"{drop:.2f} points" in err and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forced.onnx"]  # no file, no temp file

    assert tudui_main(["export", str(outlier_model), "--int8", "--calib", "100", "--max-drop", f"{drop + 0.5:.2f}",
                       "--out", str(out)]) == 0
    assert "-> ok" in capsys.readouterr().out and out.is_file()
    # the same checkpoint in fp32 loses nothing: the gate measures quantisation, not the doctored weights
    r = tudui.export(outlier_model, "onnx", tmp_path / "fp32.onnx", max_drop=0)
    assert abs(r.accuracy.drop) < 1e-9 and r.accuracy.worst_class_drop <= 1e-9


def test_int8_metadata_holds_the_measured_figures(int8_onnx, digits_run):
    import onnx

    path, r = int8_onnx
    meta = onnx_meta(path)
    assert meta["validation"] == r.accuracy.to_dict()
    v = meta["validation"]
    val = len(load_named("digits", True).targets) * 0.1  # the run's 10% hold-out of the training images
    assert abs(v["images"] - val) <= 10 and v["split"] == "val" and v["max_drop"] == 1.0
    assert abs(v["top1_pytorch"] - 100 * digits_run.val["top1"]) < 0.01  # what training measured on that split
    assert meta["quantization"]["dtype"] == "int8" and meta["quantization"]["calibration_images"] == 100
    # really int8: weights stored as int8, activations quantised (QDQ), not an fp32 graph with an int8 label
    proto = onnx.load(str(path))
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8_weights) == 4 == meta["quantization"]["int8_weights"]  # three convolutions and the classifier
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) >= 4
    assert meta["classes"] == [str(i) for i in range(10)] and meta["img_size"] == 8


def test_int8_predict_and_eval_agree_with_fp32_on_real_images(int8_onnx, tiny_model):
    path, _ = int8_onnx
    fp32 = tudui.evaluate(tiny_model, "digits", split="test", device="cpu")
    q = tudui.evaluate(path, "digits", split="test", device="cpu")
    assert q["checkpoint"] == str(path)
    assert abs(q["top1"] - fp32["top1"]) <= 0.015, (q["top1"], fp32["top1"])  # within 1.5 points, 360 images
    want = [p.topk[0][0] for p in tudui.predict(tiny_model, str(IMAGES), device="cpu")[1]]
    got = [p.topk[0][0] for p in tudui.predict(path, str(IMAGES), device="cpu")[1]]
    assert got == want and len(got) == 10


def test_int8_refuses_formats_it_does_not_apply_to(tiny_model, tmp_path, capsys):
    assert tudui_main(["export", str(tiny_model), "--format", "torchscript", "--int8", "--out",
                       str(tmp_path / "m.torchscript")]) == 2
    assert "--int8 applies to --format onnx or openvino" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_calibration_images_are_class_balanced(digits_run):
    from tudui.inference.gate import calibration_images
    from tudui.inference.formats import load_model

    loaded = load_model(digits_run.best)
    cfg = torch.load(digits_run.best, map_location="cpu", weights_only=True)["config"]
    x = calibration_images(cfg, None, loaded.spec, 25)
    assert x.shape == (25, 1, 8, 8)
    # which training images they are: match each back to a digits image by its pixels
    train = load_named("digits", True)
    raw = torch.from_numpy(train.images).permute(0, 3, 1, 2).float()  # (N, 1, 8, 8) 0..255
    from tudui.data import normalize

    ref = normalize(raw.to(torch.uint8), loaded.spec)
    labels = [int(train.targets[int(((ref - xi).abs().flatten(1).sum(1)).argmin())]) for xi in x]
    counts = np.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 25, counts


# --- OpenVINO ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def openvino_exports(tiny_model, tmp_path_factory):
    """(fp32 .xml, int8 .xml) of the digits run: OpenVINO's runtime, NNCF's int8 on 100 calibration images."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    root = tmp_path_factory.mktemp("openvino 模型")  # a space and CJK in the path
    fp32 = tudui.export(tiny_model, "openvino", root / "m.xml")
    int8 = tudui.export(tiny_model, "openvino", root / "m-int8.xml", int8=True, calib=100)
    return fp32, int8


def test_openvino_exports_hold_their_figures_and_are_int8_where_asked(openvino_exports):
    import openvino as ov

    fp32, int8 = openvino_exports
    assert [p.name for p in fp32.files] == ["m.xml", "m.bin"] and all(p.is_file() for p in fp32.files)
    assert sorted(p.name for p in fp32.path.parent.iterdir()) == ["m-int8.bin", "m-int8.xml", "m.bin", "m.xml"]
    assert fp32.max_abs_diff <= 1e-4 and fp32.accuracy.drop == 0 and fp32.quantization is None
    from tudui.inference.formats import load_model

    for r in (fp32, int8):
        loaded = load_model(r.path)
        assert loaded.format == "openvino" and loaded.spec.classes == [str(i) for i in range(10)]
        assert loaded.meta["validation"] == r.accuracy.to_dict()
    assert load_model(int8.path).meta["quantization"]["dtype"] == "int8"
    model = ov.Core().read_model(str(int8.path))
    kinds = {op.get_type_name() for op in model.get_ops()}
    assert "FakeQuantize" in kinds  # NNCF's quantisation: int8 at run time
    i8 = [op for op in model.get_ops() if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8]
    assert len(i8) >= 4  # the weights of three convolutions and the classifier, stored as int8
    assert "FakeQuantize" not in {op.get_type_name() for op in ov.Core().read_model(str(fp32.path)).get_ops()}


def test_openvino_predict_and_eval_agree_with_the_checkpoint(openvino_exports, tiny_model):
    fp32, int8 = openvino_exports
    ref = tudui.evaluate(tiny_model, "digits", split="test", device="cpu")
    want = [p.topk[0] for p in tudui.predict(tiny_model, str(IMAGES), device="cpu")[1]]
    got32 = tudui.evaluate(fp32.path, "digits", split="test")
    assert got32["top1"] == ref["top1"]
    got8 = tudui.evaluate(int8.path, "digits", split="test")
    assert abs(got8["top1"] - ref["top1"]) <= 0.015, (got8["top1"], ref["top1"])
    p32 = [p.topk[0] for p in tudui.predict(fp32.path, str(IMAGES))[1]]
    assert [c for c, _ in p32] == [c for c, _ in want] and np.allclose([p for _, p in p32], [p for _, p in want],
                                                                        atol=1e-4)
    assert [p.topk[0][0] for p in tudui.predict(int8.path, str(IMAGES))[1]] == [c for c, _ in want]


def test_openvino_model_is_served(openvino_exports, live_server):
    import httpx

    from tudui.inference import Predictor
    from tudui.inference.server import create_app

    _, int8 = openvino_exports
    predictor = Predictor.from_path(int8.path)
    image = (IMAGES / "digit0003.png").read_bytes()
    with live_server(create_app(predictor)) as url:
        info = httpx.get(f"{url}/info").json()
        r = httpx.post(f"{url}/predict", files={"file": ("d.png", image, "image/png")}, timeout=30)
    assert info["format"] == "openvino" and info["model"] == "m-int8.xml"
    assert r.status_code == 200
    assert r.json()["predictions"][0]["class"] == predictor.predict([IMAGES / "digit0003.png"], topk=1)[0].topk[0][0]


def test_an_openvino_model_without_its_weights_is_one_clear_error(openvino_exports, tmp_path, capsys):
    fp32, _ = openvino_exports
    lone = tmp_path / "lone.xml"
    lone.write_bytes(fp32.path.read_bytes())
    assert tudui_main(["predict", str(lone), str(IMAGES)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lone.bin not found" in err
