"""Pictures: the confusion matrix draws the numbers it is given, grids pick the right images, PNGs open.

Each picture is checked twice: the figure object (caught as it is saved) holds the data it was given, and the
PNG itself shows it (coloured pixels: a blank figure, or one with only axes and text, has none).
"""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import colored_pixels

from tudui.engine.metrics import TopMistakes
from tudui.engine.multilabel import LabelMistakes
from tudui.reporting.plots import (plot_batch, plot_confusion, plot_curves, plot_label_mistakes, plot_mistakes,
                                   plot_pr_curves, read_confusion_csv, read_results, write_confusion_csv)


def _open(path):
    with Image.open(path) as im:
        im.load()
        return im.size


def test_a_blank_figure_has_no_colored_pixels(tmp_path):
    from tudui.reporting.plots import _figure, _save

    fig = _figure(6, 4)
    fig.subplots().set_title("axes, ticks and a title only")
    assert colored_pixels(_save(fig, tmp_path / "blank.png")) == 0  # so the checks below can fail


def test_confusion_is_row_normalised_and_legible_with_100_classes(tmp_path, figures):
    cm = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    drawn = plot_confusion(cm, ["a", "b", "c"], tmp_path / "cm.png", "val")
    assert np.allclose(drawn, [[0.8, 0.2, 0], [0, 0, 0], [0.25, 0.25, 0.5]])  # an empty row stays 0, not NaN
    w, h = _open(tmp_path / "cm.png")
    assert 400 < w < 1500 and 400 < h < 1500
    ax = figures[-1].axes[0]
    assert np.allclose(ax.images[0].get_array(), drawn)  # the matrix is what is painted
    assert sorted(t.get_text() for t in ax.texts) == sorted([".80", ".20", ".25", ".25", ".50"])  # non-zero cells
    assert ax.get_title() == "val: 14 images, top-1 71.43% (rows sum to 1)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert colored_pixels(tmp_path / "cm.png") > 0.05 * w * h  # blue cells, not an empty frame

    rng = np.random.default_rng(0)
    big = rng.integers(0, 5, (100, 100)) + np.diag(rng.integers(50, 100, 100))
    names = [f"class_{i:03d}" for i in range(100)]
    drawn = plot_confusion(big, names, tmp_path / "cm100.png")
    assert np.allclose(drawn.sum(1), 1) and np.allclose(drawn, big / big.sum(1, keepdims=True))
    w, h = _open(tmp_path / "cm100.png")
    assert w >= 1500 and h >= 1500  # grows with the class count: ~18 px per row at 100 classes
    ax = figures[-1].axes[0]
    assert len(ax.get_yticklabels()) == 100 and len(ax.texts) == 0  # every class named; no numbers in 10,000 cells
    assert colored_pixels(tmp_path / "cm100.png") > 100 * 150  # at least the 100 blue diagonal cells

    write_confusion_csv(big, names, tmp_path / "cm.csv")
    assert read_confusion_csv(tmp_path / "cm.csv") == (names, big.tolist())


def test_top_mistakes_keep_the_most_confident_wrong(tmp_path, figures):
    x = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 4, 4)  # image i is filled with value i
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05], [0.45, 0.55]])
    y = torch.tensor([0, 0, 1, 1, 1, 0])  # wrong: 1 (0.8), 2 (0.6), 4 (0.95), 5 (0.55)
    top = TopMistakes(k=3)
    top.update(x[:3], probs[:3], y[:3])
    top.update(x[3:], probs[3:], y[3:])
    got = top.items
    assert [round(c, 2) for c, *_ in got] == [0.95, 0.8, 0.6]
    assert [int(img[0, 0, 0]) for _, img, _, _ in got] == [4, 1, 2]
    assert [(t, p) for _, _, t, p in got] == [(1, 0), (0, 1), (1, 0)]
    plot_mistakes(got, ["cat", "dog"], tmp_path / "m.png")
    assert min(_open(tmp_path / "m.png")) > 100
    ax = figures[-1].axes[0]
    assert [t.get_text() for t in ax.texts] == ["true dog\npred cat 95%", "true cat\npred dog 80%",
                                                "true dog\npred cat 60%"]
    canvas = ax.images[0].get_array()  # the montage: each image (value i / 255, grey) in its cell, white around
    assert sorted(np.unique(np.round(np.asarray(canvas) * 255)).tolist()) == [1, 2, 4, 255]


def test_pr_curves_draw_scikit_learns_points_for_each_class(tmp_path, figures):
    from sklearn.metrics import average_precision_score, precision_recall_curve

    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(120, 3, generator=g) < 0.3).float()
    targets[:, 2] = 0  # a class with no positive image: no curve (its recall is undefined)
    probs = ((torch.rand(120, 3, generator=g) * 0.7 + targets * 0.3) * 20).round() / 20  # ties, as real scores have
    drawn = plot_pr_curves(probs.numpy(), targets.numpy(), ["猫", "dog", "bird"], tmp_path / "pr.png")
    assert len(drawn) == 2 and colored_pixels(tmp_path / "pr.png") > 500
    for c in (0, 1):
        precision, recall, _ = precision_recall_curve(targets[:, c].numpy(), probs[:, c].numpy())
        np.testing.assert_allclose(drawn[c], np.stack([recall, precision], 1), rtol=1e-12)
    labels = [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()]
    ap = average_precision_score(targets[:, 0].numpy(), probs[:, 0].numpy())
    assert labels == [f"猫 (AP {ap:.2f})", labels[1]] and labels[1].startswith("dog (AP ")


def test_label_mistakes_keep_the_images_furthest_from_their_labels_and_name_missed_and_spurious(tmp_path, figures):
    x = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 4, 4)  # image i is filled with value i
    probs = torch.tensor([[0.9, 0.1, 0.2], [0.2, 0.8, 0.9], [0.5, 0.6, 0.5], [0.1, 0.1, 0.1], [0.5, 0.7, 0.5]])
    y = torch.tensor([[1.0, 0, 0], [1, 0, 1], [0, 1, 1], [0, 0, 0], [1, 1, 1]])
    # |y - p| summed: 0.4, 1.7, 1.4, 0.3, 1.3 -> the three furthest are images 1, 2, 4
    top = LabelMistakes(k=3)
    top.update(x[:2], probs[:2], y[:2])
    top.update(x[2:], probs[2:], y[2:])
    assert [int(m[1][0, 0, 0]) for m in top.items] == [1, 2, 4]
    assert [round(m[0], 2) for m in top.items] == [1.7, 1.4, 1.3]
    path = plot_label_mistakes(top.items, ["cat", "dog", "bird"], [0.5, 0.5, 0.7], tmp_path / "m.png")
    assert path == tmp_path / "m.png" and min(_open(path)) > 100
    ax = figures[-1].axes[0]
    # image 1 misses cat (0.2 < 0.5) and is given dog (0.8 >= 0.5); bird's 0.9 is over its 0.7: right.
    # image 2 misses bird (0.5 < 0.7) and is given cat (0.5, at its threshold), which it lacks.
    # image 4 has every label, each at or over its threshold but bird (0.5 < 0.7): one missed label
    assert [t.get_text() for t in ax.texts] == ["- cat 20%\n+ dog 80%", "- bird 50%\n+ cat 50%", "- bird 50%"]
    # an image whose every label is right at the thresholds is not drawn; with none left, no picture
    right = (0.3, np.zeros((4, 4, 1), np.uint8), np.array([0.9, 0.1, 0.8]), np.array([1.0, 0, 1]))
    assert plot_label_mistakes([right], ["cat", "dog", "bird"], [0.5, 0.5, 0.7], tmp_path / "n.png") is None
    assert not (tmp_path / "n.png").exists()


def test_curves_and_batch(tmp_path, figures):
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,train_loss,val_loss,val_top1,val_top5,lr,epoch_time_s,images_per_s\n"
                   "1,2.0,1.5,0.5,0.9,0.1,1,100\n2,1.0,,,,0.05,1,100\n")
    rows = read_results(csv)
    assert rows[1]["train_loss"] == 1.0 and np.isnan(rows[1]["val_loss"])  # no validation -> a gap, not a crash
    plot_curves(rows, tmp_path / "curves.png")
    w, h = _open(tmp_path / "curves.png")
    assert w > 2 * h > 400
    loss, acc, lr = figures[-1].axes
    assert [ax.get_title() for ax in (loss, acc, lr)] == ["loss", "accuracy (%)", "learning rate (at epoch start)"]
    ys = [[list(line.get_ydata()) for line in ax.lines] for ax in (loss, acc, lr)]
    assert np.allclose(ys[0], [[2.0, 1.0], [1.5, np.nan]], equal_nan=True)
    assert np.allclose(ys[1], [[50, np.nan], [90, np.nan]], equal_nan=True)
    assert np.allclose(ys[2], [[0.1, 0.05]])
    assert colored_pixels(tmp_path / "curves.png") > 500  # the plotted lines and markers

    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train: training objective", "val cross-entropy"]
    # ^ a results.csv from before train_objective: its train_loss was the objective, and its line says so

    images = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    plot_batch(images, torch.arange(10) % 2, ["cat", "dog"], tmp_path / "b.png")
    assert min(_open(tmp_path / "b.png")) > 100
    ax = figures[-1].axes[0]
    assert [t.get_text() for t in ax.texts] == ["cat", "dog"] * 5
    canvas = np.asarray(ax.images[0].get_array())  # 8 columns; rows of 8 px images under 4 px title bands
    assert np.allclose(canvas[4:12, 0:8], images[0].permute(1, 2, 0).numpy())
    assert np.allclose(canvas[4:12, 9:17], images[1].permute(1, 2, 0).numpy())
    assert colored_pixels(tmp_path / "b.png") > 0.1 * min(_open(tmp_path / "b.png")) ** 2


def test_curves_say_that_train_and_val_loss_are_one_measure_beside_the_objective(tmp_path, figures):
    """results.csv's train_loss and val_loss are both plain cross-entropy: the loss panel says so, and draws the
    training objective (label smoothing here) dashed beside them, named; where the objective is the cross-entropy
    itself it adds nothing and is not drawn."""
    header = "epoch,train_loss,val_loss,val_top1,val_top5,lr,epoch_time_s,images_per_s,train_objective\n"
    csv = tmp_path / "results.csv"
    csv.write_text(header + "1,1.2,1.1,0.6,0.9,0.001,1,100,1.4\n2,0.4,0.5,0.8,0.95,0.002,1,100,0.75\n")
    plot_curves(read_results(csv), tmp_path / "curves.png", "cross-entropy, label smoothing 0.1")
    loss = figures[-1].axes[0]
    assert loss.get_title() == "loss: cross-entropy, train and val alike"
    labels = [t.get_text() for t in loss.get_legend().get_texts()]
    assert labels == ["train cross-entropy (training batches)", "val cross-entropy",
                      "train objective (cross-entropy, label smoothing 0.1)"]
    assert [list(line.get_ydata()) for line in loss.lines] == [[1.2, 0.4], [1.1, 0.5], [1.4, 0.75]]
    assert loss.lines[2].get_linestyle() == "--"
    csv.write_text(header + "1,1.2,1.1,0.6,0.9,0.001,1,100,1.2\n2,0.4,0.5,0.8,0.95,0.002,1,100,0.4\n")
    plot_curves(read_results(csv), tmp_path / "curves.png", "cross-entropy")
    assert len(figures[-1].axes[0].lines) == 2


def test_a_multi_label_runs_curves_name_binary_cross_entropy_map_and_exact_match(tmp_path, figures):
    """A multi-label run's results.csv (val_map filled; val_top1 holds the exact-match ratio, val_top5 nothing): the
    loss panel names binary cross-entropy, the other panel draws mAP and exact match and no top-1 or top-5."""
    header = ("epoch,train_loss,val_loss,val_top1,val_top5,lr,epoch_time_s,images_per_s,train_objective,val_macro_f1,"
              "val_balanced_acc,val_map,val_micro_f1\n")
    csv = tmp_path / "results.csv"
    csv.write_text(header + "1,0.5,0.4,0.3,,0.001,1,100,0.5,0.6,,0.7,0.65\n2,0.3,0.35,0.45,,0.002,1,100,0.3,0.7,,0.8,0.75\n")
    plot_curves(read_results(csv), tmp_path / "curves.png", "binary cross-entropy", 4)
    loss, score = figures[-1].axes[:2]
    assert loss.get_title() == "loss: binary cross-entropy, train and val alike"
    assert [t.get_text() for t in loss.get_legend().get_texts()] == [
        "train binary cross-entropy (training batches)", "val binary cross-entropy"]
    assert score.get_title() == "mAP and exact match (%)"
    assert [t.get_text() for t in score.get_legend().get_texts()] == ["val mAP", "val exact match"]
    assert [list(line.get_ydata()) for line in score.lines] == [[70.0, 80.0], [30.0, 45.0]]


def _text_boxes(fig):
    """(axes index, text, window extent in pixels) of every visible, non-empty text of a drawn figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from tudui.reporting.fonts import cjk_fonts

    canvas = FigureCanvasAgg(fig)
    with cjk_fonts(fig):  # measured in the fonts the PNG was drawn with
        canvas.draw()
        renderer = canvas.get_renderer()
        out = [(-1, t, t.get_window_extent(renderer)) for t in fig.texts if t.get_visible() and t.get_text()]
        for i, ax in enumerate(fig.axes):
            texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts, *ax.get_xticklabels(),
                     *ax.get_yticklabels(), *(ax.get_legend().get_texts() if ax.get_legend() else [])]
            out += [(i, t, t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text()]
    return out


LONG_NAMES = (["T恤", "a rather long class name", "很长的中文类别名称也要显示完整", "Ankle boot"]
              + [f"c{i}" for i in range(8)])


@pytest.mark.parametrize("picture", ["curves", "confusion", "confusion-100", "mistakes", "batch", "pr-curves",
                                     "pr-curves-40", "reliability", "reliability-multi-label"])
def test_the_run_pictures_keep_every_label_inside_the_figure_and_apart(tmp_path, figures, picture):
    """The pictures of a run, laid out from margins computed from their own labels (the precision-recall curves by
    constrained layout): long Latin and Chinese class names, 7-character tick labels, legends and titles stay inside
    the figure, and no label of one panel runs into another panel's."""
    rng = np.random.default_rng(0)
    if picture.startswith("pr-curves"):
        names = LONG_NAMES if picture == "pr-curves" else [f"很长的中文类别名称 {i}" for i in range(40)]
        hot = rng.random((60, len(names))) < 0.3
        plot_pr_curves(np.clip(hot + rng.normal(0, 0.4, hot.shape), 0, 1), hot, names, tmp_path / "p.png",
                       "best weights on val")
    elif picture.startswith("reliability"):
        from tudui.engine.calibration import calibrate_logits
        from tudui.reporting.plots import plot_reliability

        y = torch.as_tensor(rng.integers(0, 3, 300))
        if picture == "reliability":
            logits = torch.as_tensor(rng.normal(0, 1, (300, 3))) + 3 * torch.nn.functional.one_hot(y, 3)
            calibration = calibrate_logits((logits.float(), y), None)
        else:
            hot = torch.nn.functional.one_hot(y, 3).float()
            calibration = calibrate_logits((torch.as_tensor(rng.normal(0, 1, (300, 3))).float() + 2 * hot, hot), None,
                                           multi_label=True)
        plot_reliability(calibration, tmp_path / "p.png")
    elif picture == "curves":
        rows = [{"epoch": e, "train_loss": 2 / e, "val_loss": 2.1 / e, "train_objective": 2.3 / e, "val_top1": 0.5,
                 "val_top5": 0.9, "lr": 2.75e-3 * e / 10} for e in range(1, 11)]
        plot_curves(rows, tmp_path / "p.png", "cross-entropy, label smoothing 0.1", 12)
    elif picture.startswith("confusion"):
        names = LONG_NAMES if picture == "confusion" else [f"类别_{i:03d}" for i in range(100)]
        plot_confusion(rng.integers(0, 9, (len(names),) * 2), names, tmp_path / "p.png", "best weights on val")
    elif picture == "mistakes":
        items = [(0.9, rng.integers(0, 255, (28, 28, 1), dtype=np.uint8), i, i + 1) for i in range(2)]
        plot_mistakes(items, LONG_NAMES, tmp_path / "p.png", "most confidently wrong on val (rank 0's 1/2 share)")
    else:
        plot_batch(torch.rand(8, 1, 28, 28), torch.arange(8), LONG_NAMES, tmp_path / "p.png")
    fig = figures[-1]
    boxes = [(i, t, b) for i, t, b in _text_boxes(fig)
             if i < 0 or fig.axes[i].axison or t in fig.axes[i].texts + [fig.axes[i].title]]  # hidden axes: no ticks
    for ax in fig.axes:  # tick labels beyond the axis' limits are not drawn
        for axis, (lo, hi) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            hidden = [label for tick, label in zip(axis.get_majorticklocs(), axis.get_ticklabels())
                      if not lo - 1e-9 * abs(hi - lo) <= tick <= hi + 1e-9 * abs(hi - lo)]
            boxes = [(i, t, b) for i, t, b in boxes if t not in hidden]
    w, h = fig.bbox.width, fig.bbox.height
    outside = [t.get_text() for _, t, b in boxes if b.x0 < -1 or b.y0 < -1 or b.x1 > w + 1 or b.y1 > h + 1]
    assert not outside, f"clipped at the figure's edge: {outside}"
    panels = [fig.axes[i].get_window_extent() for i in range(len(fig.axes))]
    crossing = [(i, t.get_text()) for i, t, b in boxes if i >= 0 and t in fig.axes[i].get_yticklabels()
                for j, p in enumerate(panels) if j != i and b.overlaps(p)]
    assert not crossing, f"tick labels over another panel: {crossing}"
    ticks = [(i, t, b) for i, t, b in boxes if i >= 0 and t in fig.axes[i].get_xticklabels()]
    touching = [(t.get_text(), u.get_text()) for i, t, b in ticks for j, u, c in ticks if i < j and b.overlaps(c)]
    assert not touching, f"tick labels of two panels run together: {touching}"
    if picture in ("mistakes", "batch"):  # the title band holds the (wrapped) title above the images
        (_, title, tb), = [(i, t, b) for i, t, b in boxes if i == -1]
        assert tb.y0 >= panels[0].y1 - 1 or tb.y0 >= fig.axes[0].images[0].get_window_extent().y1 - 1
        # each image's title keeps to its own column: long names are set smaller, then shortened in the middle
        cells = [(t.get_text(), b) for i, t, b in boxes if i == 0 and t in fig.axes[0].texts]
        assert len(cells) == (2 if picture == "mistakes" else 8)
        overlapping = [(a, c) for k, (a, b) in enumerate(cells) for c, d in cells[k + 1:] if b.overlaps(d)]
        assert not overlapping, f"image titles run together: {overlapping}"
