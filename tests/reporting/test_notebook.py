"""tudui in a notebook: a RunResult shows as a short summary and its pictures, predictions as a table with
thumbnails, and the progress bar and epoch table are Jupyter's where an IPython kernel runs tudui (simulated here:
a stand-in IPython module whose shell has the kernel's IPKernelApp config, as tqdm.autonotebook tests for)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tudui
from tudui.core import console
from tudui.core.config import TrainConfig
from tudui.core.notebook import in_notebook
from tudui.reporting.console import ConsoleCallback


class Shell:
    def __init__(self, kernel: bool) -> None:
        self.config = {"IPKernelApp": {}} if kernel else {"TerminalIPythonApp": {}}


class Handle:
    def __init__(self, shown: list) -> None:
        self.shown = shown

    def update(self, obj) -> None:
        self.shown.append(("update", obj))


@pytest.fixture
def kernel(monkeypatch):
    """A stand-in IPython kernel: returns the list of what was displayed (("display", obj) / ("update", obj))."""
    shown: list = []

    def display(obj, display_id=None, **_):
        shown.append(("display", obj))
        return Handle(shown) if display_id else None

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: Shell(kernel=True)
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.display = display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)
    assert in_notebook()
    return shown


def test_a_run_result_shows_as_one_short_line(digits_run):
    text = repr(digits_run)
    assert text == (f"RunResult(fast on digits: best epoch {digits_run.best_epoch}, "
                    f"val top1 {digits_run.val['top1']:.2%}, test top1 {digits_run.test['top1']:.2%}; "
                    f"{digits_run.run_dir})")
    assert digits_run.best_epoch in (1, 2, 3) and len(text) < 200 + len(str(digits_run.run_dir))


def test_show_returns_the_run_pictures_without_a_display(digits_run, capsys):
    assert not in_notebook()
    images = digits_run.show()
    files = [digits_run.run_dir / f for f in ("curves.png", "confusion_matrix.png", "mistakes.png", "train_batch.png")]
    assert [f for f in files if f.is_file()] == files  # all four drawn, in show()'s order
    assert len(images) == 4
    for image, f in zip(images, files):
        with Image.open(f) as on_disk:
            assert image.size == on_disk.size and np.array_equal(np.asarray(image), np.asarray(on_disk))
    curves = digits_run.show("curves")
    assert len(curves) == 1 and np.array_equal(np.asarray(curves[0]), np.asarray(images[0]))
    assert capsys.readouterr().out == ""  # no display: nothing printed either
    with pytest.raises(tudui.TuduiError, match="show\\(\\) takes one of 'curves', 'confusion', 'pr_curves', 'mistakes', 'batch'"):
        digits_run.show("roc")


def test_in_a_notebook_show_displays_each_picture_inline(digits_run, kernel, capsys):
    images = digits_run.show()
    assert [obj for _, obj in kernel] == images
    kernel.clear()
    confusion = digits_run.show("confusion")
    assert confusion == [kernel[0][1]]
    confusion._ipython_display_()  # as the cell's result: shown once already, so nothing more
    assert len(kernel) == 1 and capsys.readouterr().out == ""


def test_the_html_summary_names_the_run_and_shows_its_curves(digits_run):
    page = digits_run._repr_html_()
    assert f"<td>{digits_run.run_dir}</td>" in page and "<td>best epoch</td><td>" in page
    assert f"top1 {digits_run.test['top1']:.2%}" in page
    assert page.count('<img src="data:image/png;base64,') == 1  # the curves


@pytest.fixture
def tqdm_notebook():
    """tqdm's notebook module, imported with the real IPython and ipywidgets (before the stand-in kernel)."""
    pytest.importorskip("ipywidgets")
    import tqdm.notebook

    return tqdm.notebook


def test_in_a_notebook_progress_is_the_widget_bar(tqdm_notebook, kernel, monkeypatch):
    monkeypatch.setattr(tqdm_notebook, "display", lambda *a, **k: None)  # tqdm's module bound IPython's own
    p = console.Progress(5, "epoch 1")
    assert type(p.bar) is tqdm_notebook.tqdm_notebook
    p.update(5, loss="0.1")
    p.close()


def test_in_a_notebook_without_ipywidgets_progress_is_the_text_bar(kernel, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed
    p = console.Progress(5, "epoch 1")
    assert type(p.bar) is console.tqdm
    p.update(5)
    p.close()
    assert "epoch 1" in capsys.readouterr().err


@pytest.mark.parametrize("ipython", [None, "terminal"])
def test_outside_a_kernel_progress_is_the_plain_line(ipython, monkeypatch, capsys):
    if ipython:  # IPython's terminal shell: no kernel
        module = types.ModuleType("IPython")
        module.get_ipython = lambda: Shell(kernel=False)
        monkeypatch.setitem(sys.modules, "IPython", module)
    else:
        monkeypatch.delitem(sys.modules, "IPython", raising=False)
    p = console.Progress(5, "epoch 1", interval=0)
    assert p.bar is None
    p.update(2, loss="0.5")
    assert capsys.readouterr().err == "epoch 1 2/5  loss 0.5\n"


ROW = {"epoch": 1, "train_loss": 0.41234, "train_objective": 0.41234, "val_loss": 0.5, "val_top1": 0.875,
       "val_top5": 1.0, "lr": 0.002, "epoch_time_s": 4.06, "images_per_s": 14592.4}


def fake_run(history: list[dict]):
    cfg = TrainConfig(epochs=2, warmup_epochs=0)
    return types.SimpleNamespace(cfg=cfg, steps_per_epoch=10, history=history,
                                 spec=types.SimpleNamespace(num_classes=10))


def test_in_a_notebook_the_epochs_are_one_table_updated_in_place(kernel, capsys):
    cb, history = ConsoleCallback(), []
    for epoch in (1, 2):
        history.append(ROW | {"epoch": epoch, "val_top1": 0.8 + epoch / 100})
        cb.on_epoch_end(fake_run(history), history[-1], None)
    assert capsys.readouterr().out == ""  # no epoch lines beside the table
    assert [kind for kind, _ in kernel] == ["display", "update"]
    table = kernel[-1][1]._repr_html_()
    assert table.count("<tr>") == 3 and "<td>2/2</td>" in table and "<td>82.00%</td>" in table


def test_on_a_terminal_or_in_a_log_the_epochs_are_lines(capsys):
    cb, history = ConsoleCallback(), [ROW]
    cb.on_epoch_end(fake_run(history), ROW, None)
    assert capsys.readouterr().out.startswith("epoch 1/2  train_loss 0.4123  val_loss 0.5000  top1 87.50%")


def test_predictions_show_as_a_table_of_thumbnails_and_top_classes(tiny_model, tmp_path):
    good = tmp_path / "a <b> 图.png"  # escaped in the HTML, Chinese kept
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30), dtype=np.uint8)).save(good)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    _, preds = tudui.predict(tiny_model, [str(good), str(bad)], topk=2)
    page = preds._repr_html_()
    rows = page.split("<tr>")[2:]
    assert len(rows) == 2
    (c1, p1), (c2, p2) = preds[0].topk
    assert '<img src="data:image/png;base64,' in rows[0] and "a &lt;b&gt; 图.png" in rows[0]
    assert f"{c1} {p1:.1%}, {c2} {p2:.1%}" in rows[0]
    assert "<img" not in rows[1] and "error: " in rows[1]
    assert isinstance(preds, list) and [p.source for p in preds] == [str(good), str(bad)]
