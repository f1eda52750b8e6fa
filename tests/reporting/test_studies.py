"""A study's pictures (Optuna's matplotlib visualisations): titled with the study, Chinese names drawn by the CJK
fallback font as in tudui's other pictures, no missing-glyph warnings."""
from __future__ import annotations

import warnings

import pytest
from PIL import Image

from tudui.reporting import fonts
from tudui.reporting.studies import draw_study

optuna = pytest.importorskip("optuna")


def test_chinese_study_and_parameter_names_render_without_missing_glyphs(tmp_path, monkeypatch, capsys):
    if fonts.families_for("夜间搜索学习率模型")[1]:
        pytest.skip("no CJK font installed: `make install` installs fonts-wqy-microhei where apt-get is usable")
    monkeypatch.setattr(fonts, "_warned", False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="夜间搜索", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    # a parameter with a Chinese name, and choices that are Chinese file names (a user's model: 模型/网络.py:Net)
    study.optimize(lambda t: t.suggest_float("学习率", 1e-4, 1e-1, log=True)
                   + (0.5 if t.suggest_categorical("model", ["模型/网络.py:Net", "fast"]) == "fast" else 0.0),
                   n_trials=6)
    titles = []
    from matplotlib.figure import Figure

    save = Figure.savefig

    def recording(fig, *args, **kwargs):
        titles.append(fig.axes[0].get_title())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written, notes = draw_study(study, tmp_path, "验证 top1")
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not missing, missing[:3]
    assert "warning" not in capsys.readouterr().err and notes == []
    assert [p.name for p in written] == ["history.png", "importances.png", "parallel.png"]
    assert len(titles) == 3 and all(t.endswith(": study 夜间搜索") for t in titles), titles
    for p in written:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == (900, 500)
