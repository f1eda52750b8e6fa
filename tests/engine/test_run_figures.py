"""The figures a run reports are ones a learner can compare: every evaluation in one precision, train and val loss
one measure, the best epoch chosen by one rule, and lines that say what their numbers are."""
from __future__ import annotations

import csv
import json
import re

import pytest
import torch
import yaml

import tudui
from tudui.engine import trainer
from tudui.models import create_model

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
    frozen = {}
    if head:  # a frozen backbone needs weights; what they hold does not matter here: a fresh mnist-cnn's
        torch.manual_seed(0)
        torch.save(create_model("mnist-cnn", 10, 1, 8).state_dict(), tmp_path / "start.pth")
        frozen = {"freeze_backbone": True, "weights": str(tmp_path / "start.pth")}
    r = tudui.train(**DIGITS, epochs=2, subset=512, amp="bf16", **frozen, project=str(tmp_path),
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
    """best.pt of 3 epochs of the course's MNIST net on 640 digits: confident predictions, where label smoothing and
    the MSE of probabilities are far from the cross-entropy."""
    project = tmp_path_factory.mktemp("runs")
    return tudui.train(**DIGITS, epochs=3, subset=640, lr=0.02, amp="off", project=str(project), name="w").best


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


def test_of_two_epochs_with_equal_top1_the_one_with_lower_val_loss_is_best(tmp_path, monkeypatch, capsys):
    """Validation scripted per epoch (the run itself is real): epoch 2 ties epoch 1 on top-1 at a much lower loss and
    becomes the best; epoch 3's equal top-1 at a higher loss does not. best.pt holds epoch 2."""
    from tudui.core.checkpoint import load_checkpoint

    scripted = iter([(0.5, 1.0), (0.5, 0.3), (0.5, 0.6)])
    real = trainer.validate

    def validate(run, epoch, criterion):
        val = real(run, epoch, criterion)
        top1, loss = next(scripted)
        return val | {"top1": top1, "loss": loss}

    monkeypatch.setattr(trainer, "validate", validate)
    r = tudui.train(**DIGITS, epochs=3, subset=256, project=str(tmp_path), name="tie")
    assert _best_epoch(r) == 2 and load_checkpoint(r.best)["epoch"] == 2
    assert "done: best epoch 2," in capsys.readouterr().out


def test_improves_breaks_a_top1_tie_by_the_lower_val_loss():
    from types import SimpleNamespace

    run = SimpleNamespace(cfg=SimpleNamespace(best_by="top1"), best_score=0.8, best_epoch=2,
                          history=[{"epoch": 1, "val_loss": 0.2}, {"epoch": 2, "val_loss": 0.9}])
    assert trainer.improves(run, {"top1": 0.8, "loss": 0.5})  # the tie at a lower loss than epoch 2's
    assert not trainer.improves(run, {"top1": 0.8, "loss": 0.9})  # equal on both: the earlier epoch stays
    assert not trainer.improves(run, {"top1": 0.79, "loss": 0.01})  # top-1 first
    assert trainer.improves(run, {"top1": 0.81, "loss": 5.0})
    assert trainer.improves(SimpleNamespace(cfg=run.cfg, best_score=-1.0, best_epoch=0, history=[]),
                            {"top1": 0.0, "loss": 9.0})


def test_the_first_epoch_line_says_the_rate_asked_for_and_the_warm_up_start(tmp_path, capsys):
    """One-cycle starts at --lr / 25: the first epoch's line says `lr 0.003 (warm-up from 0.00012)`, the later
    lines the rate at their start; with a constant rate the first line is the rate itself."""
    tudui.train(**DIGITS, epochs=2, subset=256, lr=0.003, project=str(tmp_path), name="warm")
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch ")]
    assert "  lr 0.003 (warm-up from 0.00012)  " in lines[0]
    assert "warm-up" not in lines[1] and re.search(r"  lr [\d.e-]+  ", lines[1])
    tudui.train(**DIGITS, epochs=1, subset=256, lr=0.003, scheduler="none", project=str(tmp_path), name="flat")
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch 1/1"))
    assert "  lr 0.003  " in line and "warm-up" not in line


def test_top5_is_shown_only_with_more_than_5_classes(photo_folder, tmp_path, capsys, figures):
    """A 4-class run: no top-5 in its epoch lines, curves.png or `tudui eval` (it is 100% by definition there);
    a 10-class run keeps it."""
    from tudui.cli import main as tudui_main
    from tudui.reporting.console import epoch_line

    r = tudui.train(data=str(photo_folder), model="mnist-cnn", img_size=16, epochs=1, batch_size=16,
                    tensorboard=False, project=str(tmp_path), name="four")
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("epoch 1/1"))
    assert re.search(r"top1 \d", line) and not re.search(r"top5 \d", line)
    curves = next(f for f in figures if f.axes[0].get_title().startswith("loss"))
    assert [t.get_text() for t in curves.axes[1].get_legend().get_texts()] == ["val top-1"]
    assert tudui_main(["eval", str(r.best), "--data", str(photo_folder), "--split", "val",
                       "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"top1 \d", out) and not re.search(r"top5 \d", out)  # (the folder's name has 'top5')
    row = {"epoch": 2, "train_loss": 0.4, "val_loss": 0.5, "val_top1": 0.8, "val_top5": 0.9, "lr": 0.002,
           "epoch_time_s": 4.0, "images_per_s": 100.0}
    assert "top5 90.00%" in epoch_line(row, 10, num_classes=10) and "top5" not in epoch_line(row, 10, num_classes=5)


def test_a_schedule_warms_up_when_its_rate_rises_from_its_first_step():
    from types import SimpleNamespace

    from tudui.engine.optim import warms_up

    def cfg(scheduler, epochs=1, warmup_epochs=0):
        return SimpleNamespace(scheduler=scheduler, epochs=epochs, warmup_epochs=warmup_epochs, gamma=0.1, step_size=1)

    assert warms_up(cfg("onecycle"), 20)  # from lr / 25
    assert not warms_up(cfg("onecycle"), 3)  # too short a cycle: it starts in its decay (no "warm-up from")
    assert warms_up(cfg("cosine", 3, warmup_epochs=1), 10) and not warms_up(cfg("cosine", 3), 10)
    assert not warms_up(cfg("none"), 10) and not warms_up(cfg("step"), 10)
