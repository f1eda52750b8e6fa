"""A multi-label model's thresholds travel: checkpoint, ONNX metadata, predict, eval and serve apply them."""
import json

import httpx
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import tudui
from tudui.cli import main
from tudui.data import model_logits
from tudui.inference import Predictor


def _images(pairs_csv, n=12):
    return [str(pairs_csv.parent / "img" / f"{i}.png") for i in range(n)]


def _calibrated(p, files):
    """(N, K) each class's sigmoid of its logit divided by its calibration temperature (best.pt's, one per class)."""
    t = torch.tensor(torch.load(p.source, weights_only=True)["temperature"])
    with torch.no_grad():
        return torch.sigmoid(model_logits(p.model, p.preprocess(files), p.spec) / t).numpy()


def test_predict_returns_every_class_over_its_threshold_with_its_sigmoid(pairs_run, pairs_csv):
    p = Predictor.from_path(pairs_run.best, device="cpu")
    saved = torch.load(pairs_run.best, weights_only=True)["data"]["thresholds"]
    assert p.thresholds == saved and len(set(saved)) > 1  # each class its own, chosen on validation
    files = _images(pairs_csv)
    preds = p.predict(files, topk=3)
    probs = _calibrated(p, files)
    for pred, row in zip(preds, probs):
        want = sorted(((p.classes[k], float(row[k])) for k in range(len(row)) if row[k] >= saved[k]),
                      key=lambda t: -t[1])
        assert [c for c, _ in pred.labels] == [c for c, _ in want]
        assert np.allclose([v for _, v in pred.labels], [v for _, v in want], atol=1e-6)
        assert len(pred.topk) == 3 and pred.to_dict()["labels"] == [{"class": c, "probability": v}
                                                                     for c, v in pred.labels]
    assert any(len(pred.labels) >= 2 for pred in preds)  # images of two digits get two labels
    two = next(pred for pred in preds if len(pred.labels) >= 2)
    cell = "<td>" + ", ".join(f"{c} {v:.1%}" for c, v in two.labels) + "</td>"
    assert cell in type(preds)([two])._repr_html_()  # a notebook's table shows the labels, not the top-k


def test_onnx_metadata_carries_the_thresholds_and_gives_the_same_labels(pairs_run, pairs_csv, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tudui.export(pairs_run.best, "onnx", tmp_path / "m.onnx").path
    onnx_p, pt = Predictor.from_path(out, device="cpu"), Predictor.from_path(pairs_run.best, device="cpu")
    saved = torch.load(pairs_run.best, weights_only=True)["data"]["thresholds"]
    assert onnx_p.spec.multi_label and onnx_p.thresholds == pt.thresholds == saved  # read from the .onnx itself
    files = _images(pairs_csv)
    assert [[c for c, _ in r.labels] for r in onnx_p.predict(files)] == \
        [[c for c, _ in r.labels] for r in pt.predict(files)]


def test_eval_scores_at_the_saved_thresholds(pairs_run, pairs_csv, tmp_path, capsys):
    r = tudui.evaluate(pairs_run.best, [str(pairs_csv)])
    assert r["thresholds"] == Predictor.from_path(pairs_run.best, device="cpu").thresholds
    assert 0 < r["map"] <= 1 and r["n"] == 160 and "confusion" not in r
    assert main(["eval", str(pairs_run.best), "--data", str(pairs_csv), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mAP" in out and "threshold" in out
    header = (tmp_path / "eval_all_per_class.csv").read_text().splitlines()[0]
    assert header == "class,precision,recall,f1,support,ap,threshold"
    assert "eval_all_pr_curves.png" in out and (tmp_path / "eval_all_pr_curves.png").stat().st_size > 0
    probs, targets = r["scores"]["probs"], r["scores"]["targets"]  # every image's, from which mAP was computed
    present = targets.sum(0) > 0
    assert probs.shape == (160, 10) and r["map"] == pytest.approx(
        average_precision_score(targets[:, present], probs[:, present]))
    assert main(["eval", str(pairs_run.best), "--data", str(pairs_csv), "--out", str(tmp_path), "--json"]) == 0
    assert "scores" not in json.loads(capsys.readouterr().out)  # the arrays are drawn, not printed


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_serve_answers_with_the_labels_over_their_thresholds(pairs_run, pairs_csv, live_server, runtime, tmp_path):
    """On PyTorch and on the ONNX Runtime copy `tudui serve --runtime auto` makes on a CPU: the same labels and
    calibrated probabilities as PyTorch's predict."""
    from tudui.inference import runtime as runtimes
    from tudui.inference.server import create_app

    ref = Predictor.from_path(pairs_run.best, device="cpu")
    p = Predictor.from_path(pairs_run.best, device="cpu")
    runtimes.attach(p, runtimes.prepare(p, runtime, tmp_path)[0])
    assert p.runtime == runtime
    with live_server(create_app(p, topk=2)) as url:
        info = httpx.get(f"{url}/info", timeout=30).json()
        assert info["multi_label"] and info["thresholds"] == p.thresholds and info["runtime"] == runtime
        for f, probs in zip(_images(pairs_csv, 4), _calibrated(ref, _images(pairs_csv, 4))):
            body = httpx.post(f"{url}/predict", content=open(f, "rb").read(), timeout=30).json()
            want = ref.predict([f])[0].labels
            assert [x["class"] for x in body["labels"]] == [c for c, _ in want] and len(body["predictions"]) == 2
            # each class's calibrated sigmoid (its logit over its temperature), as predict gives it
            assert [x["probability"] for x in body["predictions"]] == pytest.approx(sorted(probs)[::-1][:2],
                                                                                   abs=1e-5)


def test_eval_reads_a_wider_csv_by_its_column_names_and_recreates_the_validation_split(pairs_run, pairs_csv,
                                                                                        tmp_path):
    rows = pairs_csv.read_text().splitlines()[1:]
    wide = tmp_path / "wide.csv"  # absolute image paths, read where they are
    wide.write_text("n,file,note,labels\n" + "".join(f"{i},{pairs_csv.parent / r.split(',')[0]},x,{r.split(',')[1]}\n"
                                                      for i, r in enumerate(rows)))
    r = tudui.evaluate(pairs_run.best, [str(wide)], csv_columns=["file", "labels"], split="val")
    assert r["n"] == pairs_run.val["n"] and r["map"] == pytest.approx(pairs_run.val["map"], abs=1e-6)


def test_the_export_gate_scores_a_multi_label_model_by_map(pairs_run, tmp_path):
    """The export gate ranks a multi-label export as training ranks its epochs: mAP against the PyTorch model's on
    the validation split (scikit-learn's average_precision_score as the reference), the largest per-class AP drop;
    int8 calibration draws images of every class (an image of several classes once)."""
    pytest.importorskip("onnxruntime")
    from sklearn.metrics import average_precision_score

    from tudui.core.checkpoint import load_checkpoint
    from tudui.data import normalize
    from tudui.inference import gate

    ckpt = load_checkpoint(pairs_run.best)
    acc = tudui.export(pairs_run.best, "onnx", tmp_path / "q.onnx", int8=True, calib=40, max_drop=100).accuracy
    pt = Predictor.from_path(pairs_run.best, device="cpu")
    batches = gate.validation_batches(ckpt["config"], None, pt.spec)
    x = torch.cat([normalize(b, pt.spec) for b, _ in batches])
    y = torch.cat([t for _, t in batches]).numpy()
    with torch.no_grad():
        s = torch.sigmoid(model_logits(pt.model, x, pt.spec)).numpy()
    present = y.sum(0) > 0
    assert acc.measure == "mAP" and acc.images == len(y) and "mAP" in acc.line("onnx int8")
    assert acc.top1_pytorch == pytest.approx(100 * average_precision_score(y[:, present], s[:, present],
                                                                           average="macro"), abs=1e-6)
    calib = gate.calibration_images(ckpt["config"], None, pt.spec, 40)
    assert 0 < len(calib) <= 40
