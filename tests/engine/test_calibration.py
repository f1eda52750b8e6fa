"""Calibrated probabilities (engine/calibration.py): the temperature is the validation NLL's minimum (against a grid
search), ECE against a hand computation, the temperature stored by training and `tudui calibrate`, and found again by
predict, eval and an ONNX export."""
from __future__ import annotations

import json
import numpy as np
import pytest
import torch

import tudui
from tudui.cli import main as cli_main
from tudui.data import load_decoded, eval_layout, load_eval_split, make_loader
from tudui.engine import calibration as cal
from tudui.inference.formats import load_model


def _val_logits(path):
    """(logits, targets) of the digits run's own validation hold-out, by the checkpoint's raw model."""
    loaded = load_model(path)
    cfg = loaded.meta["training"]
    split, _ = load_eval_split(["digits"], "val", None, cfg["val_split"], cfg["seed"])
    split, in_memory, _ = load_decoded(split.reindex(loaded.spec.classes), eval_layout(loaded.spec))
    loader = make_loader(split, loaded.spec, 512, False, torch.device("cpu"), in_memory=in_memory)
    return cal.collect_logits(loaded.model, loader, loaded.spec, torch.device("cpu"))


def test_the_temperature_minimises_the_validation_nll(digits_run):
    logits, targets = _val_logits(digits_run.best)
    t = cal.fit_temperature(logits, targets)
    grid = np.exp(np.linspace(np.log(0.1), np.log(10), 1001))  # steps of 0.46%
    nlls = [torch.nn.functional.cross_entropy(logits.double() / g, targets).item() for g in grid]
    best = grid[int(np.argmin(nlls))]
    assert t == pytest.approx(best, rel=0.005)
    assert cal.nll(logits, targets, t) <= min(nlls) + 1e-9
    # the top class never changes, and the run stored exactly this temperature in best.pt
    assert torch.equal((logits / t).argmax(1), logits.argmax(1))
    assert torch.load(digits_run.best, weights_only=True)["temperature"] == pytest.approx(t, rel=1e-6)


def test_ece_against_a_hand_computation():
    # top probabilities 0.95 and 0.95 (bin 15: (14/15, 1]), 0.55 (bin 9: (8/15, 9/15]), 0.7 (class 1; bin 11:
    # (10/15, 11/15]); right: yes, no, yes, no
    probs = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.3, 0.7]])
    targets = torch.tensor([0, 0, 0, 0])
    # bin 15: confidence 0.95, accuracy 1/2 -> gap 0.45, weight 2/4; bin 9: 0.55 vs 1 -> 0.45, 1/4;
    # bin 11: 0.7 vs 0 -> 0.7, 1/4.  ECE = 0.45 / 2 + 0.45 / 4 + 0.7 / 4 = 0.5125
    assert cal.ece(probs, targets) == pytest.approx(0.5125)
    r = cal.reliability(probs, targets)
    assert r["count"][14] == 2 and r["count"][8] == 1 and r["count"][10] == 1 and sum(r["count"]) == 4
    assert r["accuracy"][14] == 0.5 and r["confidence"][10] == pytest.approx(0.7)
    assert cal.ece(torch.eye(3), torch.arange(3)) == 0.0  # sure and right: perfectly calibrated


def test_training_reports_the_ece_and_draws_the_reliability_diagram(digits_run):
    m = json.loads((digits_run.run_dir / "metrics.json").read_text())["calibration"]
    assert m["bins"] == 15 and m["temperature"] > 0
    for split in ("val", "test"):
        assert m[split]["ece_after"] < m[split]["ece_before"] and m[split]["nll_after"] < m[split]["nll_before"]
    assert (digits_run.run_dir / "reliability.png").stat().st_size > 0
    assert digits_run.pictures["reliability"] == digits_run.run_dir / "reliability.png"


def test_predict_eval_and_onnx_apply_the_temperature(digits_run, tiny_onnx):
    t = torch.load(digits_run.best, weights_only=True)["temperature"]
    assert t != pytest.approx(1.0, abs=0.05)  # else the test below could not tell
    ckpt = tudui.Predictor.from_path(digits_run.best, device="cpu")
    onnx = tudui.Predictor.from_path(tiny_onnx[0], device="cpu")
    assert ckpt.temperature == onnx.temperature == pytest.approx(t)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        raw = ckpt.model(x)  # the spec's flip TTA is off for digits
    assert not ckpt.spec.flip_tta
    expected = (raw / t).softmax(1)
    assert torch.allclose(ckpt.probabilities(x), expected, atol=1e-6)
    assert torch.allclose(onnx.probabilities(x), expected, atol=1e-4)
    r = tudui.evaluate(digits_run.best, "digits", split="val")
    logits, targets = _val_logits(digits_run.best)
    assert r["temperature"] == pytest.approx(t)
    # loss: the logits as trained (results.csv's val_loss measure); calibrated_loss: divided by the temperature
    assert r["loss"] == pytest.approx(cal.nll(logits, targets, 1.0), rel=1e-4)
    assert r["calibrated_loss"] == pytest.approx(cal.nll(logits, targets, t), rel=1e-4)


def test_calibrate_an_older_checkpoint(digits_run, tmp_path, capsys):
    old = tmp_path / "old.pt"
    ckpt = torch.load(digits_run.best, weights_only=True)
    t = ckpt.pop("temperature")
    torch.save(ckpt, old)  # as written before tudui calibrated
    assert tudui.Predictor.from_path(old, device="cpu").temperature == 1.0
    assert cli_main(["calibrate", str(old), "--data", "digits"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("temperature ") and "expected calibration error" in out
    assert torch.load(old, weights_only=True)["temperature"] == pytest.approx(t, rel=1e-6)  # the run's own val
    assert (tmp_path / "reliability.png").exists()


def test_bad_calibrate_input_is_one_error_line(tiny_onnx, tiny_model, capsys):
    assert cli_main(["calibrate", str(tiny_onnx[0]), "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is an export: calibrate its checkpoint, then export it again" in err, err
    with pytest.raises(SystemExit) as e:  # argparse's own usage line: the training split is no place to calibrate
        cli_main(["calibrate", str(tiny_model), "--data", "digits", "--split", "train"])
    assert e.value.code == 2 and "invalid choice: 'train'" in capsys.readouterr().err


def test_calibrate_off_stores_no_temperature(tmp_path):
    r = tudui.train(data="digits", model="fast", epochs=1, batch_size=256, project=str(tmp_path), name="off",
                    calibrate="off", plots=False, tensorboard=False)
    assert "temperature" not in torch.load(r.best, weights_only=True)
    assert "calibration" not in json.loads((r.run_dir / "metrics.json").read_text())
