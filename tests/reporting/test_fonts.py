"""Chinese class names in the pictures: drawn by a CJK fallback font when one is installed, one warning when not."""
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tudui.reporting import fonts
from tudui.reporting.plots import (plot_batch, plot_confusion, plot_label_mistakes, plot_mistakes, plot_pr_curves,
                                   render)

ZH = ["裤子", "运动鞋", "T恤/上衣"]
PAGE = Path(fonts.__file__).resolve().parents[1] / "inference" / "static" / "index.html"


@pytest.fixture
def fresh(monkeypatch):
    """Each test sees a process that has not warned yet."""
    monkeypatch.setattr(fonts, "_warned", False)
    return fonts


def _glyph(ch: str) -> np.ndarray:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.text(0.5, 0.5, ch, fontsize=48, ha="center", va="center")
    return render(fig, dpi=50)


def _has_cjk_font() -> bool:
    return not fonts.families_for("裤子运动鞋")[1]


def test_missing_glyphs_names_only_what_no_font_has():
    assert fonts.missing_glyphs("true 裤子\npred 裤 97%", ["DejaVu Sans"]) == ["裤", "子"]
    assert fonts.missing_glyphs("T-shirt/top 0.97", ["DejaVu Sans"]) == []


def test_chinese_labels_are_drawn_by_a_cjk_font(fresh, tmp_path, capsys):
    if not _has_cjk_font():
        pytest.skip("no CJK font installed: `make install` installs fonts-wqy-microhei where apt-get is usable")
    assert len(fonts.font_families()) > 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion(np.array([[3, 1, 0], [0, 4, 0], [1, 0, 2]]), ZH, tmp_path / "cm.png", "验证集")
        plot_batch(torch.rand(6, 1, 8, 8), torch.arange(6) % 3, ZH, tmp_path / "batch.png")
        hot = np.array([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])  # multi-label: the legend, missed/spurious
        plot_pr_curves(np.array([[0.9, 0.2, 0.4], [0.3, 0.8, 0.6], [0.6, 0.7, 0.1], [0.2, 0.1, 0.9]]), hot, ZH,
                       tmp_path / "pr.png")
        plot_label_mistakes([(1.2, np.zeros((8, 8, 1), np.uint8), np.array([0.2, 0.7, 0.9]), hot[0])], ZH,
                            [0.5, 0.5, 0.5], tmp_path / "m.png")
        a, b = _glyph("裤"), _glyph("子")
    assert not [w for w in caught if "missing from font" in str(w.message)]
    assert "warning" not in capsys.readouterr().err
    assert all((tmp_path / f).stat().st_size > 0 for f in ("cm.png", "batch.png", "pr.png", "m.png"))
    # Two different ideographs give two different pictures (a missing glyph is the same empty box for both).
    assert (a < 128).sum() > 50 and not np.array_equal(a, b)


def test_one_warning_naming_the_package_when_no_font_has_the_glyphs(fresh, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(fonts, "CJK_FAMILIES", ())  # a system with no CJK font at all
    monkeypatch.setattr(fonts, "_rescanned", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion(np.eye(3, dtype=int), ZH, tmp_path / "cm.png")
        plot_batch(torch.rand(6, 3, 8, 8), torch.arange(6) % 3, ZH, tmp_path / "batch.png")
        plot_mistakes([(0.9, np.zeros((8, 8, 1), np.uint8), 0, 1)], ZH, tmp_path / "m.png")
        a, b = _glyph("裤"), _glyph("子")
    assert not [w for w in caught if "missing from font" in str(w.message)]  # not one per glyph
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: no installed font can draw 裤 子 运 动 鞋 恤 上 衣")
    assert "apt-get install fonts-wqy-microhei" in err[0]
    assert all((tmp_path / f).stat().st_size > 0 for f in ("cm.png", "batch.png", "m.png"))  # still written
    assert np.array_equal(a, b)  # both ideographs are the same missing-glyph box: what the warning is about


def test_serve_page_names_the_same_fallback_fonts():
    css = re.search(r"body \{[^}]*font:([^;]*);", PAGE.read_text(encoding="utf-8")).group(1)
    named = [f.strip().strip('"') for f in css.split(",")]
    listed = [f for f in named if f in fonts.CJK_FAMILIES]
    assert listed == list(fonts.CJK_FAMILIES)  # every family, in the same order
    assert named.index(fonts.BASE_FAMILY) < named.index(fonts.CJK_FAMILIES[0]) and named[-1] == "sans-serif"
