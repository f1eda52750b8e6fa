"""Progress output: a bar on a terminal; in a log (stderr not a terminal), one plain line every 10 s, on a fake clock."""
import re
import sys

import pytest

from tudui.core import console


class FakeClock:
    """Stands in for the `time` module console.py reads: perf_counter() returns `now`, moved by the test."""

    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step = 1000.0, step

    def perf_counter(self) -> float:
        self.now += self.step  # step > 0: every reading moves the clock on
        return self.now


def _epoch(progress: console.Progress, clock: FakeClock, steps: int, seconds_per_step: float) -> None:
    """What train_one_epoch does each step: the figures are formatted only when a display is due."""
    for _ in range(steps):
        clock.now += seconds_per_step
        if progress.due():
            progress.update(1, loss="0.5000", img_s="640")
        else:
            progress.update(1)
    progress.close()


def test_in_a_log_progress_is_one_line_every_10_seconds(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(console, "time", clock)
    progress = console.Progress(95, "epoch 1/3")  # capsys' stderr is not a terminal
    assert progress.bar is None
    _epoch(progress, clock, 95, 1.0)  # 95 steps of 1 s: a line at 10 s, 20 s, ... 90 s
    err = capsys.readouterr().err
    assert err.splitlines() == [f"epoch 1/3 {n}/95  loss 0.5000  img_s 640" for n in range(10, 91, 10)]
    assert "\r" not in err

    progress = console.Progress(40, "epoch 2/3")
    _epoch(progress, clock, 40, 0.2)  # 8 s in all: nothing printed
    assert capsys.readouterr().err == ""


def test_on_a_terminal_progress_is_a_bar(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(console, "time", clock)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress = console.Progress(30, "epoch 1/3")
    assert progress.bar is not None
    _epoch(progress, clock, 30, 1.0)
    err = capsys.readouterr().err
    assert "\r" in err and "epoch 1/3" in err  # tqdm redraws one line in place ...
    assert not re.search(r"^epoch 1/3 \d+/30  loss", err, re.M)  # ... instead of printing the log's lines


def test_a_training_run_in_a_log_prints_a_line_every_10_seconds(monkeypatch, capsys, tmp_path):
    """The trainer's own progress (epoch label, loss, images/s) follows the same rule: 10 steps, each 3 s long on
    the fake clock (moved by a callback after each step), print their line at 12 s and 24 s: steps 4 and 8."""
    import tudui
    from tudui.engine.callbacks import Callback

    clock = FakeClock()
    monkeypatch.setattr(console, "time", clock)

    class ThreeSecondSteps(Callback):
        def on_train_batch(self, run, step, x, y, loss):
            clock.now += 3.0

    tudui.train(data="digits", model="fast", epochs=1, batch_size=32, subset=320, plots=False, tensorboard=False,
                project=str(tmp_path), callbacks=[ThreeSecondSteps()])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch 1/1 ")]
    assert [line.split()[2] for line in lines] == ["4/10", "8/10"], lines
    assert all(re.fullmatch(r"epoch 1/1 \d+/10  loss \d+\.\d{4}  img_s \d+", line) for line in lines), lines
