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


def test_a_split_with_no_mistake_keeps_the_logits_as_they_are():
    """With every validation image right, the NLL only falls as T falls to 0 (the minimiser would make every
    answer 100% sure): the temperature stays 1. One mistake among them gives a finite minimum again, below 1."""
    logits = torch.tensor([[4.0, 1.0, 0.0], [0.5, 2.0, 0.0], [0.0, 0.2, 3.0], [1.0, 0.0, 0.5]])
    right = torch.tensor([0, 1, 2, 0])
    assert cal.fit_temperature(logits, right) == 1.0
    assert cal.fit_temperature(logits, right[:0]) == 1.0
    one_wrong = torch.tensor([0, 1, 2, 2])
    t = cal.fit_temperature(logits, one_wrong)
    grid = np.exp(np.linspace(np.log(0.01), np.log(100), 2001))
    assert t == pytest.approx(grid[int(np.argmin([cal.nll(logits, one_wrong, g) for g in grid]))], rel=0.01)


def test_a_run_fits_its_temperature_on_the_logits_of_its_final_evaluation(tmp_path, monkeypatch):
    """The end of a run passes over val and test once: the temperature and the test calibration report come from the
    logits the final evaluation kept (a second pass, as the run once made, would fail here), and they are the same
    as a fresh pass gives."""
    def second_pass(*args, **kwargs):
        raise AssertionError("a second pass over a split at the end of training")

    monkeypatch.setattr(cal, "collect_logits", second_pass)
    r = tudui.train(data="digits", model="fast", epochs=1, batch_size=256, project=str(tmp_path), name="once",
                    tensorboard=False, plots=False)
    monkeypatch.undo()
    logits, targets = _val_logits(r.best)
    t = torch.load(r.best, weights_only=True)["temperature"]
    assert t == pytest.approx(cal.fit_temperature(logits, targets), rel=1e-6)
    reported = json.loads((r.run_dir / "metrics.json").read_text())["calibration"]
    assert reported["val"]["ece_after"] == pytest.approx(cal.ece((logits / t).softmax(1), targets), abs=1e-6)
    assert r.test["n"] == 359 and reported["test"]["n"] == 359


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


# --- multi-label models: one temperature per class ------------------------------------------------------------------
class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _digit_pairs(n, rng):
    """n (8x16 uint8 image of two real digits side by side, its 1 or 2 class names) items."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images * 16).clip(0, 255).astype(np.uint8), d.target
    out = []
    for a, b in rng.integers(0, len(x), (n, 2)):
        out.append((np.concatenate([x[a], x[b]], 1), sorted({f"d{y[a]}", f"d{y[b]}"})))
    return out


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    """A calibrated multi-label run with val and test splits (digit pairs held in memory, 3 epochs of `fast`):
    (RunResult, the data). Its temperatures lie inside CLASS_T_RANGE (a model trained this far is over-confident on
    some classes and under-confident on others), unlike the 2-epoch pairs_run's."""
    rng = np.random.default_rng(1)
    data = {"train": _Items(_digit_pairs(400, rng)), "val": _Items(_digit_pairs(160, rng)),
            "test": _Items(_digit_pairs(160, rng))}
    r = tudui.train(data=data, model="fast", epochs=3, batch_size=64, img_size=8, lr=0.01, tensorboard=False,
                    project=str(tmp_path_factory.mktemp("mlcal")), name="ml")
    return r, data


def _logits_of(run, items):
    """((N, K) logits by best.pt's raw model, (N, K) multi-hot targets) of (image, names) items."""
    from PIL import Image

    p = tudui.Predictor.from_path(run.best, device="cpu")
    x = p.preprocess([Image.fromarray(img) for img, _ in items])
    y = torch.tensor([[float(c in names) for c in p.classes] for _, names in items])
    return p.logits(x), y, x, p


def _write_csv(items, folder):
    """(image, names) items as folder/<i>.png and folder/labels.csv (`image,labels`, names joined by |)."""
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for i, (img, _) in enumerate(items):
        Image.fromarray(img).save(folder / f"{i}.png")
    csv = folder / "labels.csv"
    csv.write_text("image,labels\n" + "".join(f"{i}.png,{'|'.join(names)}\n" for i, (_, names) in enumerate(items)))
    return csv


def test_each_class_temperature_minimises_its_validation_nll(ml_run):
    """fit_class_temperatures against a grid search of each class's binary NLL on the run's validation logits; the
    run stored exactly those temperatures; a class with no positive keeps 1, and so does one separated at logit 0
    (its NLL only falls toward the range's end), while one mistake gives it a temperature inside the range."""
    run, data = ml_run
    logits, y, _, _ = _logits_of(run, data["val"])
    ts = cal.fit_class_temperatures(logits, y)
    grid = torch.exp(torch.linspace(np.log(0.05), np.log(20), 2001, dtype=torch.float64))  # steps of 0.3%
    nll = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(
        logits.double() / g, y.double(), reduction="none").mean(0) for g in grid])  # (grid, K)
    best = grid[nll.argmin(0)]
    assert ts == pytest.approx(best.tolist(), rel=0.004)
    assert (cal.class_nll(logits, y, ts) <= nll.min(0).values + 1e-12).all()
    assert all(0.06 < t < 19 for t in ts) and max(ts) / min(ts) > 1.5  # inside the range, and not one for all
    stored = torch.load(run.best, weights_only=True)["temperature"]
    assert stored == pytest.approx(ts, rel=1e-4)
    z = torch.tensor([[2.0, -1, 3], [-2.0, 1, -3], [1.0, -1, 2], [-1.0, 1, -2]])
    t = torch.tensor([[1.0, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 1]])  # class 1: no positive; class 0: separated
    ts = cal.fit_class_temperatures(z, t)
    assert ts[1] == 1.0 and ts[0] == 1.0 and 0.05 < ts[2] < 20
    t[1, 0] = 1  # image 1 (logit -2) is now a positive of class 0: a mistake
    assert cal.CLASS_T_RANGE[0] < cal.fit_class_temperatures(z, t)[0] < cal.CLASS_T_RANGE[1]


def test_multi_label_ece_against_a_hand_computation():
    """ECE over every (image, class) pair, binned by the class's probability (scikit-learn's calibration_curve
    bins)."""
    from sklearn.calibration import calibration_curve

    probs = torch.tensor([[0.95, 0.10], [0.97, 0.55], [0.05, 0.58], [0.02, 0.9]])
    targets = torch.tensor([[1.0, 0], [0, 1], [0, 0], [0, 1]])
    # pairs by bin: (14/15, 1]: 0.95 (+), 0.97 (-) -> mean 0.96, 1/2 positive, gap 0.46, weight 2/8;
    # (0, 1/15]: 0.05, 0.02 (both -) -> mean 0.035, 0, gap 0.035, 2/8; (1/15, 2/15]: 0.10 (-) -> 0.10, 1/8;
    # (8/15, 9/15]: 0.55 (+), 0.58 (-) -> mean 0.565, 1/2, gap 0.065, 2/8; (13/15, 14/15]: 0.9 (+) -> 0.1, 1/8
    hand = 0.46 * 2 / 8 + 0.035 * 2 / 8 + 0.10 / 8 + 0.065 * 2 / 8 + 0.1 / 8
    assert cal.binary_ece(probs, targets) == pytest.approx(hand)
    r = cal.binary_reliability(probs, targets)
    assert sum(r["count"]) == 8 and r["count"][14] == 2 and r["accuracy"][8] == 0.5
    p, t = probs.reshape(-1).numpy(), targets.reshape(-1).numpy()
    frac, mean = calibration_curve(t, p, n_bins=15)
    counts = [c for c in r["count"] if c]
    assert sum(c / 8 * abs(f - m) for c, f, m in zip(counts, frac, mean)) == pytest.approx(hand)
    # the run's report is this ECE of the sigmoid probabilities before and after the division
    z = torch.logit(probs.double()).float()
    rep = cal.multilabel_report(z, targets, [2.0, 0.5])
    assert rep["ece_before"] == pytest.approx(hand, abs=1e-6)
    assert rep["ece_after"] == pytest.approx(cal.binary_ece((z / torch.tensor([2.0, 0.5])).sigmoid(), targets))


def test_a_multi_label_run_calibrates_first_then_chooses_its_thresholds(ml_run):
    """metrics.json holds the per-class temperatures and the ECE and NLL before/after on val and test
    (recomputed here from the run's logits); best.pt's thresholds are the F1-best ones on the calibrated validation
    probabilities, which give every validation image the labels the uncalibrated F1-best thresholds gave it;
    reliability.png is drawn."""
    from tudui.engine.multilabel import best_thresholds

    run, data = ml_run
    m = json.loads((run.run_dir / "metrics.json").read_text())
    c = m["calibration"]
    ck = torch.load(run.best, weights_only=True)
    assert c["multi_label"] and c["bins"] == 15 and c["temperature"] == ck["temperature"] and len(ck["temperature"]) == 10
    for split in ("val", "test"):
        logits, y, _, _ = _logits_of(run, data[split])
        want = cal.multilabel_report(logits, y, ck["temperature"])
        for k in ("ece_before", "ece_after", "nll_before", "nll_after"):
            assert c[split][k] == pytest.approx(want[k], abs=2e-4), (split, k)
        assert c[split]["ece_after"] < c[split]["ece_before"] and c[split]["nll_after"] < c[split]["nll_before"]
        assert m[split]["thresholds"] == ck["data"]["thresholds"]
        assert m[split]["calibrated_loss"] == pytest.approx(want["nll_after"], abs=2e-4)
    logits, y, _, _ = _logits_of(run, data["val"])
    calibrated = cal.scale(logits, ck["temperature"]).sigmoid()
    th = torch.tensor(ck["data"]["thresholds"])
    assert th.tolist() == pytest.approx(best_thresholds(calibrated, y).tolist(), abs=1e-6)
    raw = logits.sigmoid()
    assert torch.equal(calibrated >= th, raw >= best_thresholds(raw, y))  # the same labels as before calibrating
    assert (run.run_dir / "reliability.png").stat().st_size > 0 and run.pictures["reliability"].exists()


def test_predict_eval_and_onnx_apply_each_class_temperature(ml_run, tmp_path):
    pytest.importorskip("onnxruntime")
    run, data = ml_run
    ck = torch.load(run.best, weights_only=True)
    t = torch.tensor(ck["temperature"])
    logits, y, x, p = _logits_of(run, data["test"][:24])
    expected = (logits / t).sigmoid()
    assert p.temperature == pytest.approx(t.tolist())
    assert torch.allclose(p.probabilities(x), expected, atol=1e-6)
    csv = _write_csv(data["test"][:24], tmp_path)
    files = [str(tmp_path / f"{i}.png") for i in range(24)]
    preds = p.predict(files, topk=10)
    th = ck["data"]["thresholds"]
    for pred, row in zip(preds, expected):
        assert sorted(v for _, v in pred.topk) == pytest.approx(sorted(row.tolist()), abs=1e-6)
        assert {c for c, _ in pred.labels} == {p.classes[k] for k in range(10) if row[k] >= th[k]}
    onnx = tudui.Predictor.from_path(tudui.export(run.best, "onnx", tmp_path / "m.onnx").path, device="cpu")
    assert onnx.temperature == pytest.approx(t.tolist())  # from the .onnx file's metadata
    assert torch.allclose(onnx.probabilities(x), expected, atol=1e-5)
    assert [r.labels and [c for c, _ in r.labels] for r in onnx.predict(files)] == \
        [r.labels and [c for c, _ in r.labels] for r in preds]
    # tudui eval: the loss as trained, and that of the calibrated logits; the precision-recall curves' probabilities
    r = tudui.evaluate(run.best, [str(csv)])
    assert r["temperature"] == pytest.approx(t.tolist())
    assert r["loss"] == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y)),
                                      rel=1e-4)
    assert r["calibrated_loss"] == pytest.approx(float(cal.class_nll(logits, y, t.tolist()).mean()), rel=1e-4)
    assert np.allclose(r["scores"]["probs"], expected.numpy(), atol=1e-6)


def test_old_checkpoints_load_with_a_scalar_temperature_or_none(ml_run, tmp_path):
    """A multi-label checkpoint with no temperature gives each class's plain sigmoid, one with a single number
    divides every class's logit by it; a list on a single-label model or of the wrong length is one error."""
    run, data = ml_run
    ck = torch.load(run.best, weights_only=True)
    logits, _, x, _ = _logits_of(run, data["val"][:8])
    for stored, divisor in ((None, 1.0), (2.5, 2.5)):
        old = dict(ck)
        if stored is None:
            old.pop("temperature")
        else:
            old["temperature"] = stored
        torch.save(old, tmp_path / "old.pt")
        p = tudui.Predictor.from_path(tmp_path / "old.pt", device="cpu")
        assert p.temperature == divisor and torch.allclose(p.probabilities(x), (logits / divisor).sigmoid(), atol=1e-6)
    torch.save(dict(ck, temperature=ck["temperature"][:3]), tmp_path / "bad.pt")
    with pytest.raises(tudui.TuduiError, match="not one positive number for each of its 10 classes"):
        tudui.Predictor.from_path(tmp_path / "bad.pt", device="cpu")


def test_calibrate_a_multi_label_checkpoint(ml_run, tmp_path, capsys):
    """`tudui calibrate` on a multi-label checkpoint written before per-class temperatures, on the run's validation
    images as a CSV: the temperatures and thresholds the run itself fitted and chose on them, reliability.png; a
    model trained with --threshold T keeps T."""
    run, data = ml_run
    csv = _write_csv(data["val"], tmp_path / "val")
    ck = torch.load(run.best, weights_only=True)
    old = dict(ck, data=dict(ck["data"], thresholds=[0.5] * 10))
    old.pop("temperature")
    torch.save(old, tmp_path / "old.pt")
    assert cli_main(["calibrate", str(tmp_path / "old.pt"), "--data", str(csv), "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("temperatures of 10 classes, median ") and "over image-class pairs" in out
    new = torch.load(tmp_path / "old.pt", weights_only=True)
    assert new["temperature"] == pytest.approx(ck["temperature"], rel=1e-4)
    assert new["data"]["thresholds"] == pytest.approx(ck["data"]["thresholds"], abs=1e-5)
    assert (tmp_path / "reliability.png").stat().st_size > 0
    torch.save(dict(old, config=dict(old["config"], threshold=0.3)), tmp_path / "fixed.pt")
    assert cli_main(["calibrate", str(tmp_path / "fixed.pt"), "--data", str(csv), "--split", "all", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["multi_label"] and found["thresholds"] == [0.3] * 10 and found["ece_after"] < found["ece_before"]
    assert found["temperature"] == pytest.approx(ck["temperature"], rel=1e-4)
    assert torch.load(tmp_path / "fixed.pt", weights_only=True)["data"]["thresholds"] == [0.3] * 10
