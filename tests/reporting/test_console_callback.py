"""What a training run prints comes from reporting/console.py's callback, not from engine's `fit`."""
from __future__ import annotations

import tudui
from tudui.core.config import TrainConfig
from tudui.engine.trainer import fit
from tudui.reporting.console import ConsoleCallback, epoch_line

TINY = dict(data=["digits"], model="mnist-cnn", epochs=1, batch_size=64, subset=200, device="cpu", amp="off",
            plots=False, tensorboard=False)


def test_an_epoch_line_says_the_results_row():
    row = {"epoch": 2, "train_loss": 0.41234, "val_loss": 0.5, "val_top1": 0.875, "val_top5": 1.0, "lr": 0.002,
           "epoch_time_s": 4.06, "images_per_s": 14592.4}
    assert epoch_line(row, 10) == ("epoch 2/10  train_loss 0.4123  val_loss 0.5000  top1 87.50%  top5 100.00%  "
                                   "lr 0.002  4.1s  14592 img/s")
    no_val = row | {"val_loss": "", "val_top1": "", "val_top5": ""}  # a run without validation data
    assert epoch_line(no_val, 10) == "epoch 2/10  train_loss 0.4123  lr 0.002  4.1s  14592 img/s"


def test_fit_prints_no_report_of_its_own_and_the_console_callback_does(tmp_path, capsys):
    fit(TrainConfig(**TINY, project=str(tmp_path), name="quiet"))
    out = capsys.readouterr().out
    assert "epoch 1/1" not in out and "done:" not in out and "tudui " not in out
    fit(TrainConfig(**TINY, project=str(tmp_path), name="told"), [ConsoleCallback()])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"tudui {tudui.__version__}: mnist-cnn (") and lines[0].endswith("told")
    assert lines[1].startswith("epoch 1/1  train_loss ") and lines[-1].startswith("done: best epoch 1, val top1 ")
