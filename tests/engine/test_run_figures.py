"""The figures a run reports are ones a learner can compare: every evaluation in one precision, train and val loss
one measure, the best epoch chosen by one rule, and lines that say what their numbers are."""
from __future__ import annotations

import csv
import json
import re

import pytest
import yaml

import tudui
from tudui.engine import trainer

# 1,295 training images in batches of 64: 20 steps per epoch; the course's MNIST net (no BatchNorm, no dropout)
DIGITS = dict(data="digits", model="mnist-cnn", batch_size=64, plots=False, tensorboard=False)


def _rows(run_dir) -> list[dict]:
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("head", [False, True], ids=["images", "head-on-cached-features"])
def test_a_bf16_run_reports_its_best_epoch_with_the_figures_of_that_epoch(tmp_path, capsys, head):
    """Trained under bf16 autocast, validated every epoch and finally: the same weights give the same figures.
    The `done:` line's val top-1 is the best epoch's line's, and metrics.json's loss is results.csv's to the digit.
    With --freeze-backbone the head is validated on cached features each epoch and the whole model at the end."""
    r = tudui.train(**DIGITS, epochs=2, subset=512, amp="bf16", freeze_backbone=head, project=str(tmp_path),
                    name="bf16")  # bf16 is emulated (slow) on CPUs without bf16 units: a few hundred images
    assert yaml.safe_load((r.run_dir / "config.yaml").read_text())["amp"] == "bf16"  # it did train in bf16
    out = capsys.readouterr().out
    assert ("head on cached features" in out) == head
    epoch = _best_epoch(r)
    best = r.history[epoch - 1]
    assert r.val["top1"] == best["val_top1"] and r.val["loss"] == best["val_loss"]  # exactly: one evaluation twice
    row = _rows(r.run_dir)[epoch - 1]
    assert (row["val_top1"], row["val_loss"]) == (f"{r.val['top1']:.6g}", f"{r.val['loss']:.6g}")
    epoch_top1 = re.search(rf"^epoch {epoch}/2 .* top1 ([\d.]+%)", out, re.M).group(1)
    assert f"done: best epoch {epoch}, val top1 {epoch_top1}," in out


def _best_epoch(r) -> int:
    return json.loads((r.run_dir / "metrics.json").read_text())["best_epoch"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """best.pt of 3 epochs of the course's MNIST net on digits: confident predictions, where label smoothing and
    the MSE of probabilities are far from the cross-entropy."""
    return tudui.train(**DIGITS, epochs=3, amp="off", project=str(tmp_path_factory.mktemp("runs")), name="w").best


@pytest.mark.parametrize("objective", [dict(label_smoothing=0.1), dict(loss="mse")], ids=["label-smoothing", "mse"])
def test_train_loss_and_val_loss_are_one_measure_whatever_the_objective(tmp_path, trained, objective):
    """Trained and validated on the same two batches (--overfit-batches: no augmentation), from trained weights that
    do not move (lr 1e-12) in a net without dropout or BatchNorm: train_loss and val_loss are the same cross-entropy
    of the same images, equal to float rounding; the objective is logged beside it as train_objective."""
    r = tudui.train(**DIGITS, epochs=1, overfit_batches=2, weights=str(trained), optimizer="sgd", momentum=0.0,
                    lr=1e-12, weight_decay=0.0, scheduler="none", tta=False, amp="off", project=str(tmp_path),
                    name="same", **objective)
    row = _rows(r.run_dir)[0]
    train, val = float(row["train_loss"]), float(row["val_loss"])
    assert val < 1.0  # the trained weights: confident, mostly right
    assert train == pytest.approx(val, rel=1e-5)
    trained_on = float(row["train_objective"])
    assert abs(trained_on - train) > 0.1  # the objective is another number, kept in its own column
    assert r.history[0]["train_objective"] == pytest.approx(trained_on, rel=1e-5)
