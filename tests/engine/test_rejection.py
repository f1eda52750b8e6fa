""""Unknown" (engine/rejection.py): thresholds chosen on the validation split and stored with the model, found again
by eval, predict, serve and an ONNX export; accuracy on the accepted images; one error line for each bad value."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import tudui
from tudui.cli import main as cli_main
from tudui.engine import rejection

from tests.engine.test_calibration import _val_logits  # the digits run's validation logits


@pytest.mark.parametrize("kind", ["msp", "energy"])
def test_auto_keeps_the_coverage_of_the_validation_images(digits_run, kind):
    logits, targets = _val_logits(digits_run.best)
    t = torch.load(digits_run.best, weights_only=True)["temperature"]
    scores = np.sort(rejection.score(logits, kind, t).numpy())
    n = len(scores)
    predictor = tudui.Predictor.from_path(digits_run.best, device="cpu").reject(reject="auto", coverage=0.9,
                                                                                score=kind)
    # the stored threshold: halfway between the score of the image at rank floor(0.1 * (n - 1)) (numpy's 'lower'
    # quantile) and the one below it
    k = int(np.floor(0.1 * (n - 1)))
    assert scores[k] == float(np.quantile(scores, 0.1, method="lower"))
    assert predictor.reject_limit == pytest.approx((scores[k - 1] + scores[k]) / 2, rel=1e-5)
    r = tudui.evaluate(digits_run.best, "digits", split="val", reject="auto", coverage=0.9, score=kind)["rejection"]
    assert r["n"] == n and 0.1 - 1.5 / n <= r["rejected"] <= 0.1 + 1e-9 and r["score"] == kind
    keep = rejection.score(logits, kind, t).numpy() >= predictor.reject_limit
    right = (logits.argmax(1) == targets).numpy()
    assert r["accepted_top1"] == pytest.approx(right[keep].mean()) and r["accepted_top1"] >= r["top1"]


def test_rejection_report_by_hand():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [0.1, 0.0], [0.0, 0.2]])  # confident, confident, unsure, unsure
    targets = torch.tensor([0, 0, 1, 1])  # right, wrong, wrong, right
    r = rejection.rejection_report(logits, targets, 0.9, "msp")  # softmax of 4 vs 0: 0.982; 0.1 or 0.2: < 0.56
    assert r["rejected"] == 0.5 and r["accepted_top1"] == 0.5 and r["top1"] == 0.5
    assert rejection.score(logits, "energy")[0] == pytest.approx(math.log(math.exp(4) + 1))
    nothing = rejection.rejection_report(logits, targets, 1.0, "msp")
    assert nothing["rejected"] == 1.0 and math.isnan(nothing["accepted_top1"])


def test_risk_coverage_by_hand():
    # scores (msp): 0.982 (right), 0.982 (wrong: a tie), 0.550 (right), 0.525 (wrong)
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [0.2, 0.0], [0.0, 0.1]])
    targets = torch.tensor([0, 0, 0, 0])
    r = rejection.risk_coverage(logits, targets, "msp")
    assert r["coverage"] == [0.5, 0.75, 1.0]  # the tie is accepted together: no threshold keeps one of the two
    assert r["accuracy"] == pytest.approx([1 / 2, 2 / 3, 2 / 4])
    assert r["threshold"] == pytest.approx([1 / (1 + math.exp(-4)), 1 / (1 + math.exp(-0.2)), 1 / (1 + math.exp(-0.1))])


def test_eval_draws_the_risk_coverage_curve_of_its_split(digits_run, tmp_path, capsys):
    """`tudui eval` writes eval_<split>_risk_coverage.png; its points are those of every --reject-below threshold,
    counted here by brute force on the split's calibrated scores."""
    assert cli_main(["eval", str(digits_run.best), "--data", "digits", "--split", "val", "--out", str(tmp_path),
                     "--score", "energy"]) == 0
    assert Image.open(tmp_path / "eval_val_risk_coverage.png").size[0] > 300
    curve = tudui.evaluate(digits_run.best, "digits", split="val", score="energy")["risk_coverage"]
    logits, targets = _val_logits(digits_run.best)
    t = torch.load(digits_run.best, weights_only=True)["temperature"]
    s = rejection.score(logits, "energy", t).numpy()
    right = (logits.argmax(1) == targets).numpy()
    expected = [(float((s >= v).mean()), float(right[s >= v].mean())) for v in np.unique(s)[::-1]]
    assert curve["score"] == "energy" and len(curve["coverage"]) == len(expected) and curve["coverage"][-1] == 1.0
    assert np.allclose(list(zip(curve["coverage"], curve["accuracy"])), expected)
    assert curve["accuracy"][-1] == pytest.approx(right.mean())


def test_predict_serve_and_onnx_find_the_same_threshold(digits_run, tiny_onnx, fmnist, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from tudui.inference.server import create_app

    ckpt = tudui.Predictor.from_path(digits_run.best, device="cpu").reject(reject="auto")
    onnx = tudui.Predictor.from_path(tiny_onnx[0], device="cpu").reject(reject="auto")
    assert ckpt.reject_limit == onnx.reject_limit
    # a Fashion-MNIST item shown to the digits model: unknown, its scores still listed
    train, _ = fmnist
    item = tmp_path / "shoe.png"
    Image.fromarray(train.images[0][..., 0]).save(item)
    assert cli_main(["predict", str(digits_run.best), str(item), "--reject", "auto", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)[0]
    assert p["unknown"] and p["label"] == "unknown" and p["score"] < ckpt.reject_limit and len(p["predictions"]) == 5
    with TestClient(create_app(ckpt, topk=3)) as client:
        served = client.post("/predict", content=item.read_bytes()).json()
    assert served["unknown"] and served["label"] == "unknown" and served["score"] == pytest.approx(p["score"])


@pytest.mark.parametrize("argv, message", [
    (["--reject", "auto", "--coverage", "1.5"], "--coverage must be in (0, 1] (a share), got 1.5"),
    (["--reject-below", "2"], "--reject-below is a top probability with --score msp and must be in [0, 1]"),
    (["--reject-below", "0.5", "--reject", "auto"], "give --reject-below P or --reject auto, not both"),
])
def test_bad_values_are_one_error_line(tiny_model, tmp_path, capsys, argv, message):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    for command in (["predict", str(tiny_model), str(tmp_path / "x.png")],
                    ["eval", str(tiny_model), "--data", "digits"]):
        assert cli_main([*command, *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_auto_needs_the_stored_scores(digits_run, tmp_path, capsys):
    old = tmp_path / "old.pt"
    ckpt = torch.load(digits_run.best, weights_only=True)
    tables = ckpt.pop("rejection")
    torch.save(ckpt, old)  # as written before tudui stored them
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    assert cli_main(["predict", str(old), str(tmp_path / "x.png"), "--reject", "auto"]) == 2
    assert "run `tudui calibrate CHECKPOINT --data D` on it" in capsys.readouterr().err
    assert cli_main(["calibrate", str(old), "--data", "digits"]) == 0  # which stores them, from the same val split
    stored = torch.load(old, weights_only=True)["rejection"]
    assert all(stored[kind] == pytest.approx(tables[kind], rel=1e-5) for kind in ("msp", "energy"))
