"""Pictures of a run (PNG, matplotlib's Agg renderer): curves, confusion matrix (a multi-label model: precision-recall
curves), mistakes, a training batch, the reliability diagram.

Figures are built with `matplotlib.figure.Figure` rather than pyplot, so no GUI
backend or global figure state is involved (safe in a headless server or a thread).
Each picture is written atomically: a temp file in the same folder, then a rename.
Text is drawn with the font fallback list of `fonts.py`, so Chinese class names show.
"""
from __future__ import annotations

import csv
import math
import sys
import textwrap
import unicodedata
from pathlib import Path

import numpy as np
import torch

from ..core.files import atomic_path
from ..data import denormalize
from ..engine import cam
from ..engine.callbacks import Callback
from ..engine.multilabel import precision_recall_points, wrong_labels
from .fonts import cjk_fonts


def _figure(width_in: float, height_in: float, margins: tuple[float, float, float, float] | None = None,
            wspace_in: float = 0.0, axes: int = 1):
    """A figure of width_in x height_in inches. Without `margins`, matplotlib's constrained layout places its axes.

    With margins = (left, right, top, bottom) in inches (and wspace_in between `axes` side-by-side axes), the axes
    take what is left, computed here once. The pictures a training run draws (curves, confusion matrix, mistakes,
    the training batch, the reliability diagram) pass margins sized from their own text (`_text_in`): constrained
    layout measures every text in extra layout passes, a third of their time (2026-12-06, matplotlib 3.11, 2-core
    AMD EPYC, CPU-s each: curves 0.37 -> 0.21, confusion 0.39 -> 0.25, mistakes 0.18 -> 0.15, batch 0.22 -> 0.16,
    reliability 0.36 -> 0.21). Constrained layout stays for the rest: precision-recall curves with the legend beside
    them (0.23 CPU-s either way), lr-find, risk-coverage. tests/reporting/test_plots.py checks that no label is
    clipped or runs into another panel.
    """
    from matplotlib.figure import Figure

    if margins is None:
        return Figure(figsize=(width_in, height_in), layout="constrained")
    fig = Figure(figsize=(width_in, height_in))
    left, right, top, bottom = margins
    each = max(0.1, (width_in - left - right - (axes - 1) * wspace_in) / axes)  # inches per axes
    fig.subplots_adjust(left=left / width_in, right=1 - right / width_in, top=1 - top / height_in,
                        bottom=bottom / height_in, wspace=wspace_in / each)
    return fig


def _text_in(text: str, points: float) -> float:
    """The width in inches of the widest line of `text` at `points`, estimated on the wide side from DejaVu Sans'
    advances (narrow punctuation and i/l/t 0.4 em, capitals and m/w 0.78, other letters and digits 0.66) and 1.1 em
    for a CJK ideograph (East Asian wide or full-width; WenQuanYi Micro Hei's are 1.04). Margins sized from it do not
    clip a label; the cost is a little white space."""
    def em(ch: str) -> float:
        if unicodedata.east_asian_width(ch) in "WF":
            return 1.1
        return 0.4 if ch in " .,:;'|!()[]ijlrtf-" else 0.78 if ch.isupper() or ch in "mwMW%" else 0.66

    return max((sum(em(ch) for ch in line) for line in str(text).split("\n")), default=0.0) * points / 72


def _text_lines(text: str, points: float, width_in: float) -> int:
    """How many lines `text` takes when wrapped to width_in inches (matplotlib's wrap=True), estimated wide."""
    return sum(max(1, math.ceil(_text_in(line, points) / max(width_in, 0.1))) for line in str(text).split("\n"))


def _fitted(text: str, points: float, width_in: float, smallest: float = 5.0) -> tuple[str, float]:
    """(text, font size) that fit width_in inches: the size lowered as far as `smallest` points, then each line still
    too wide shortened in its middle with an ellipsis, so its start and its end (a probability) stay."""
    wide = _text_in(text, points)
    if wide <= width_in:
        return text, points
    points = max(smallest, points * width_in / wide)
    lines = []
    for line in text.split("\n"):
        short = line  # keep n characters of it, half from each end, the most that fit
        for n in range(len(line) - 1, 1, -1):
            if _text_in(short, points) <= width_in:
                break
            short = line[:(n + 1) // 2] + "…" + line[len(line) - n // 2:]
        lines.append(short)
    return "\n".join(lines), points


def _save(fig, path: str | Path, dpi: int = 100) -> Path:
    with atomic_path(path) as tmp, cjk_fonts(fig):
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)


def read_results(path: str | Path) -> list[dict[str, float]]:
    """results.csv -> rows of floats (empty cells, e.g. val_* without validation data, become NaN)."""
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def objective_name(cfg) -> str:
    """What a run's --loss minimised, in words for curves.png: 'cross-entropy, label smoothing 0.1', 'mse', ..."""
    parts = [cfg.loss]
    if cfg.loss == "cross-entropy" and cfg.label_smoothing:
        parts.append(f"label smoothing {cfg.label_smoothing:g}")
    balance = getattr(cfg, "balance", "none")
    if (cfg.class_weights == "auto" or balance == "loss") and cfg.loss in ("cross-entropy", "nll"):
        parts.append("class weights")
    if balance == "logit-adjust":
        parts.append("logit-adjusted")
    return ", ".join(parts)


def plot_curves(rows: list[dict], path: str | Path, objective: str | None = None,
                num_classes: int | None = None) -> Path:
    """Loss (train, val), accuracy (val top-1, top-5) and learning rate against epoch, from results.csv rows.

    train_loss and val_loss are one measure, plain cross-entropy (engine/results.py), drawn and labelled as such;
    the training objective (train_objective, `objective` names it) is drawn dashed beside them where it differs.
    A results.csv from before train_objective existed held the objective in train_loss: its line says so.
    Top-5 is drawn for more than 5 classes only (`num_classes`; None: whenever the rows have it). A multi-label run's
    rows (val_map filled) measure binary cross-entropy, and its accuracy panel shows mAP and the exact-match ratio
    (what val_top1 holds for it).
    """
    # margins (inches) for 10-pt tick labels of up to 7 characters ("0.00275"), a 12-pt title, an x label
    fig = _figure(13, 3.8, margins=(0.75, 0.15, 0.35, 0.5), wspace_in=0.9, axes=3)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    epoch = [r["epoch"] for r in rows]

    def col(name: str) -> list[float]:
        return [float(r.get(name, math.nan)) if r.get(name, "") != "" else math.nan for r in rows]

    older = not any("train_objective" in r for r in rows)  # train_loss was the objective then
    multi = any(math.isfinite(v) for v in col("val_map"))  # a single-label run's val_map cells are empty
    measure = "binary cross-entropy" if multi else "cross-entropy"
    ax_loss.plot(epoch, col("train_loss"), "o-",
                 label="train: training objective" if older else f"train {measure} (training batches)")
    ax_loss.plot(epoch, col("val_loss"), "s-", label=f"val {measure}")
    train, objective_col = col("train_loss"), col("train_objective")
    if any(math.isfinite(o) and not math.isclose(o, t, rel_tol=0.01) for o, t in zip(objective_col, train)):
        ax_loss.plot(epoch, objective_col, "^--", color="grey",
                     label=f"train objective ({objective})" if objective else "train objective")
    ax_loss.set(title="loss" if older else f"loss: {measure}, train and val alike", xlabel="epoch")
    if multi:
        ax_acc.plot(epoch, [100 * v for v in col("val_map")], "o-", label="val mAP")
        ax_acc.plot(epoch, [100 * v for v in col("val_top1")], "s-", label="val exact match")
    else:
        ax_acc.plot(epoch, [100 * v for v in col("val_top1")], "o-", label="val top-1")
    if not multi and (num_classes is None or num_classes > 5):  # with 5 classes or fewer top-5 is 100% by definition
        ax_acc.plot(epoch, [100 * v for v in col("val_top5")], "s-", label="val top-5")
    ax_acc.set(title="mAP and exact match (%)" if multi else "accuracy (%)", xlabel="epoch")
    ax_lr.plot(epoch, col("lr"), "o-")
    ax_lr.set(title="learning rate (at epoch start)", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=8)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def plot_confusion(confusion, classes: list[str], path: str | Path, title: str = "") -> np.ndarray:
    """Confusion matrix normalised by row (rows: true class, so the diagonal is each class's recall).

    Returns the (K, K) matrix the figure drew (row fractions in [0, 1]; rows with no samples are 0).
    The figure grows with K and labels shrink, so 100 classes stay legible; cells carry numbers up to 20 classes.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    k = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = min(40.0, max(6.0, 0.18 * k + 3)) - 1  # inches of the matrix; 100 classes -> 20 in
    font = 9 if k <= 20 else max(4.0, 9 - k / 20)
    n = int(cm.sum())
    acc = np.trace(cm) / max(n, 1)
    title = f"{title + ': ' if title else ''}{n:,} images, top-1 {acc:.2%} (rows sum to 1)"
    # margins in inches: the longest class name (rotated below the matrix, beside it on the left) and the axis label;
    # on the right the colour bar's ticks and label. The colour bar and its pad take these fractions of the matrix's
    # cell width, so the cell is side / (1 - both) wide for a square matrix.
    bar, pad = 0.046, 0.05
    names = max((_text_in(c, font) for c in classes), default=0.0) + 0.45
    width = names + side / (1 - bar - pad) + 0.75
    title_lines = _text_lines(title, 12, width - 0.3)
    top = 0.2 + 0.22 * title_lines
    fig = _figure(width, side + names + top, margins=(names, 0.75, top, names))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=bar, pad=pad, label="fraction of the true class")
    ax.set_xticks(range(k), labels=classes, rotation=90, fontsize=font)
    ax.set_yticks(range(k), labels=classes, fontsize=font)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, wrap=True)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}".lstrip("0") if norm[i, j] < 1 else "1", ha="center",
                            va="center", fontsize=font - 1, color="white" if norm[i, j] > 0.5 else "black")
    _save(fig, path)
    return np.asarray(im.get_array())


def render(fig, dpi: int = 100) -> np.ndarray:
    """The figure as an (H, W, 3) uint8 RGB array (for TensorBoard), drawn with the same fonts as the PNGs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    with cjk_fonts(fig):
        canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _grid_figure(images: np.ndarray, titles: list[str], suptitle: str, cols: int = 8):
    """images: (N, H, W, C) uint8 or float in [0, 1]; one (possibly two-line) title per image.

    One montage drawn by a single imshow, with each title in a blank band above its image: a subplot per
    image would cost about ten times as much to render.
    """
    n, h, w, _ = images.shape
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    band, gap = max(2, round(0.45 * h)), max(1, w // 10)  # title band and gap between images, in image pixels
    cell_h, cell_w = h + band, w + gap
    canvas = np.ones((rows * cell_h, cols * cell_w - gap, 3))  # white, float RGB in [0, 1]
    imgs = images.astype(np.float64) / 255.0 if images.dtype == np.uint8 else images.astype(np.float64)
    if imgs.shape[-1] == 1:
        imgs = np.repeat(imgs, 3, axis=-1)
    montage_w = 1.5 * cols  # inches
    # side margins for image titles wider than their column (the first and last are centred w/2 px from the edges),
    # the suptitle's band (12 pt lines, wrapped to the figure's width) above the montage, which fills the rest
    # a long class name would run into its neighbours' titles: set smaller, then shortened, to one column's width
    pitch = montage_w * cell_w / canvas.shape[1] - 0.06  # inches from one column's centre to the next, less a gap
    fitted = [_fitted(t, 7, pitch) if cols > 1 else (t, 7) for t in titles]
    side = max(0.02, max((_text_in(t, p) for t, p in fitted), default=0.0) / 2 - montage_w * w / 2 / canvas.shape[1])
    fig_w = montage_w + 2 * side
    top = 0.1 + 0.22 * _text_lines(suptitle, 12, fig_w - 0.2)
    fig = _figure(fig_w, montage_w * canvas.shape[0] / canvas.shape[1] + top, margins=(side, side, top, 0.02))
    ax = fig.subplots()
    ax.axis("off")
    for i, (img, (title, points)) in enumerate(zip(imgs, fitted)):
        r, c = divmod(i, cols)
        y0, x0 = r * cell_h + band, c * cell_w
        canvas[y0:y0 + h, x0:x0 + w] = img
        ax.text(x0 + w / 2, y0 - 0.5, title, ha="center", va="bottom", fontsize=points)
    ax.imshow(canvas, interpolation="nearest")
    # a narrow grid (one or two images) wraps its title instead of clipping it; 0.05 in from the top edge
    fig.suptitle(suptitle, wrap=True, y=1 - 0.05 / fig.get_figheight())
    return fig


def _image_grid(images: np.ndarray, titles: list[str], path: str | Path, suptitle: str, cols: int = 8) -> Path:
    return _save(_grid_figure(images, titles, suptitle, cols), path)


def batch_figure(images: torch.Tensor, labels, classes: list[str], title: str = "first training batch (augmented)",
                 limit: int = 32):
    """images: (B, C, H, W) float in [0, 1] (de-normalised) or uint8; labels: (B,) class indices."""
    x = images[:limit].detach().cpu().permute(0, 2, 3, 1).numpy()
    if getattr(labels, "ndim", 1) == 2:  # multi-hot (multi-label) or mixed targets: the classes each row carries
        names = ["|".join(classes[k] for k in range(len(classes)) if float(row[k]) > 0.5) or "(none)"
                 for row in labels[:limit]]
        return _grid_figure(x, names, title)
    return _grid_figure(x, [classes[int(i)] for i in labels[:limit]], title)


def plot_batch(images: torch.Tensor, labels, classes: list[str], path: str | Path,
               title: str = "first training batch (augmented)", limit: int = 32) -> Path:
    return _save(batch_figure(images, labels, classes, title, limit), path)


def plot_mistakes(mistakes: list[tuple[float, np.ndarray, int, int]], classes: list[str], path: str | Path,
                  title: str = "most confidently wrong") -> Path:
    titles = [f"true {classes[t]}\npred {classes[p]} {c:.0%}" for c, _, t, p in mistakes]
    return _image_grid(np.stack([m[1] for m in mistakes]), titles, path, title, cols=4)


def plot_pr_curves(probs, targets, classes: list[str], path: str | Path, title: str = "") -> list[np.ndarray]:
    """A multi-label model's precision-recall curves, one per class (probabilities and multi-hot targets (N, K)),
    each labelled with its class and average precision; a class with no positive image has no curve (its recall is
    undefined). Returns the (M, 2) (recall, precision) points of each curve drawn, in class order, as drawn."""
    probs, targets = torch.as_tensor(np.asarray(probs)), torch.as_tensor(np.asarray(targets))
    k = len(classes)
    fig = _figure(9.5 if k > 12 else 7.5, 5.5)
    ax = fig.subplots()
    from matplotlib import colormaps

    colours = [f"C{i}" for i in range(10)] if k <= 10 else [colormaps["turbo"](i / max(1, k - 1)) for i in range(k)]
    drawn = []
    for c, name in enumerate(classes):
        precision, recall = precision_recall_points(probs[:, c], targets[:, c])
        if not len(precision):
            continue
        ap = float((torch.diff(recall.flip(0)) * precision.flip(0)[1:]).sum())  # scikit-learn's average precision
        line, = ax.plot(recall.numpy(), precision.numpy(), drawstyle="steps-post", color=colours[c], linewidth=1.2,
                        label=f"{name} (AP {ap:.2f})")
        drawn.append(np.asarray(line.get_xydata()))
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"{title + ': ' if title else ''}precision-recall per class, {len(probs):,} images")
    ax.grid(alpha=0.3)
    if drawn:  # the legend beside the axes; it shrinks with many classes
        ax.legend(fontsize=8 if len(drawn) <= 20 else max(4.0, 8 - len(drawn) / 20), loc="center left",
                  bbox_to_anchor=(1.01, 0.5), ncol=1 if len(drawn) <= 30 else 2)
    _save(fig, path)
    return drawn


def label_mistake_title(probs, targets, thresholds, classes: list[str], lines: int = 3) -> str:
    """One image's title in a multi-label mistakes.png: a line per wrong label, "- name 12%" for a label it has that
    was missed (its probability under its threshold), "+ name 91%" for one it lacks that was given, the furthest
    from its threshold first; at most `lines` lines (the last says how many more)."""
    missed, spurious = wrong_labels(probs, targets, thresholds)
    rows = [f"- {classes[c]} {p:.0%}" for c, p in missed] + [f"+ {classes[c]} {p:.0%}" for c, p in spurious]
    if len(rows) > lines:
        rows = rows[:lines - 1] + [f"and {len(rows) - lines + 1} more"]
    return "\n".join(rows)


def plot_label_mistakes(items: list, classes: list[str], thresholds, path: str | Path,
                        title: str = "furthest from their labels") -> Path | None:
    """A multi-label model's mistakes: the images furthest from their labels (engine.multilabel.LabelMistakes' items)
    that have a wrong label at `thresholds`, each titled with its missed (-) and spurious (+) labels; None when no
    image has one."""
    wrong = [m for m in items if any(wrong_labels(m[2], m[3], thresholds))]
    if not wrong:
        return None
    titles = [label_mistake_title(m[2], m[3], thresholds, classes) for m in wrong]
    return _image_grid(np.stack([m[1] for m in wrong]), titles, path,
                       f"{title}\n- missed label, + spurious label (at the thresholds)",
                       cols=4)


def plot_lr_find(lrs: list[float], losses: list[float], raw: list[float], suggestion: float, rule: str,
                 path: str | Path) -> Path:
    """The learning-rate range test: raw and smoothed loss against the rate (log scale), the suggestion marked."""
    fig = _figure(7, 4.2)
    ax = fig.subplots()
    ax.plot(lrs, raw, color="0.75", linewidth=0.8, label="loss")
    ax.plot(lrs, losses, color="C0", label="smoothed")
    ax.axvline(suggestion, color="C3", linestyle="--",  # the rule wrapped: the legend stays inside the axes
               label=f"suggested lr {suggestion:.3g}\n" + textwrap.fill(f"({rule})", 50))
    finite = [v for v in losses + raw if math.isfinite(v)]
    if finite:  # the diverging tail would squash the interesting part
        lo, first = min(finite), losses[0]
        ax.set_ylim(lo - 0.05 * abs(lo), max(first, lo) * 1.3)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    ax.legend(fontsize=8, loc="lower left")  # the flat start of the curve is at the top left
    return _save(fig, path)


def plot_reliability(calibration: dict, path: str | Path, split: str = "val") -> Path:
    """Two panels, before and after: each bin's accuracy as a bar at its mean confidence's bin, the diagonal a
    perfectly calibrated model would follow, and the share of images per bin as a grey line. A multi-label model's
    (calibration["multi_label"]): every (image, class) pair pooled, binned by the class's probability, the bars the
    share of positives in each bin; the title gives the range of the per-class temperatures."""
    report = calibration[split]
    bins = calibration["bins"]
    multi = bool(calibration.get("multi_label"))
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    t = calibration["temperature"]
    told = f", T = {t:.3g}" if not multi else f", T per class {min(t):.3g}-{max(t):.3g}"
    titles = {when: f"{when} temperature scaling{told if when == 'after' else ''}\nECE {report[ece_key]:.4f} "
                    f"({split}, {report['n']:,} images{' x ' + str(len(t)) + ' classes' if multi else ''})"
              for when, ece_key in (("before", "ece_before"), ("after", "ece_after"))}
    # two panels side by side, each at least as wide as its two-line title; margins in inches for the tick labels,
    # the y label, the x label and the titles
    panel = max(3.9, max(_text_in(v, 12) for v in titles.values()) + 0.1)
    fig = _figure(1.5 + 2 * panel, 4.2, margins=(0.8, 0.25, 0.65, 0.55), wspace_in=0.45, axes=2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, when in zip(axes, ("before", "after")):
        r = report[f"reliability_{when}"]
        acc = np.nan_to_num(np.array(r["accuracy"], dtype=float))
        ax.bar(centres, acc, width=1 / bins, edgecolor="C0", color="C0", alpha=0.7,
               label="share positive" if multi else "accuracy")
        ax.plot([0, 1], [0, 1], "--", color="0.4", linewidth=1, label="calibrated")
        share = np.array(r["count"], dtype=float) / max(1, sum(r["count"]))
        ax.plot(centres, share, color="0.6", marker=".", linewidth=1,
                label="share of image-class pairs" if multi else "share of images")
        ax.set(xlim=(0, 1), ylim=(0, 1),
               xlabel="each class's probability" if multi else "confidence (top probability)", title=titles[when])
    axes[0].set_ylabel("share of pairs that are positive" if multi else "accuracy")
    axes[0].legend(fontsize=8, loc="upper left")
    return _save(fig, path)


class PlotsCallback(Callback):
    """Writes the run's pictures at the end of fit and lists them on the console.

    curves.png (from results.csv), confusion_matrix.png (+ .csv of the counts it was drawn from; best weights on
    val, else test), mistakes.png (most confidently wrong of that split; with --cam each with its class-activation
    map), train_batch.png (first augmented batch).
    A multi-label model has pr_curves.png (each class's precision-recall curve on that split) instead of the
    confusion matrix, and its mistakes.png shows the images furthest from their labels, missed and spurious labels.
    Each one drawn is also named in the RunResult's `pictures` ("curves", "confusion", "pr_curves", "mistakes",
    "batch"), which `RunResult.show()` displays.
    """

    def __init__(self) -> None:
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.files: list[Path] = []

    def on_train_batch(self, run, step, x, y, loss) -> None:
        if self.batch is None:  # keep a small CPU copy; drawn at the end with everything else
            self.batch = denormalize(x[:32].detach().float(), run.spec).cpu(), y[:32].cpu()

    def _draw(self, what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # a picture must never cost the run: the checkpoints are already written
            print(f"warning: could not draw {what}: {type(e).__name__}: {e}", file=sys.stderr)
            return None

    def on_fit_end(self, run, result) -> None:
        d, classes = run.run_dir, run.spec.classes
        if self._draw("training curves", plot_curves, read_results(d / "results.csv"), d / "curves.png",
                      objective_name(run.cfg), run.spec.num_classes):
            self.files.append(d / "curves.png")
        split, summary = ("val", result.val) if result.val else ("test", result.test)
        if summary is not None and "map" in summary:  # a multi-label model: curves per class, missed/spurious labels
            self._plot_multilabel(run, result, summary, split)
        if summary is not None and "confusion" in summary:  # (a multi-label model has none)
            drawn = self._draw("the confusion matrix", plot_confusion, summary["confusion"], classes,
                               d / "confusion_matrix.png", f"best weights on {split}")
            if drawn is not None:
                self.files.append(d / "confusion_matrix.png")
                write_confusion_csv(summary["confusion"], classes, d / "confusion_matrix.csv")
            self._plot_mistakes(run, result.mistakes or [], split)  # collected by the run's final evaluation
        if self.batch is not None and self._draw("the training batch", plot_batch, *self.batch, classes,
                                                 d / "train_batch.png"):
            self.files.append(d / "train_batch.png")
        if getattr(run, "calibration", None) is not None:  # --calibrate on: engine/calibration.py
            if self._draw("the reliability diagram", plot_reliability, run.calibration, d / "reliability.png"):
                self.files.append(d / "reliability.png")
        names = {"curves.png": "curves", "confusion_matrix.png": "confusion", "pr_curves.png": "pr_curves",
                 "mistakes.png": "mistakes",
                 "train_batch.png": "batch", "reliability.png": "reliability"}
        result.pictures.update({names[f.name]: f for f in self.files})
        if self.files:
            print("pictures: " + ", ".join(str(f) for f in self.files), flush=True)

    def _plot_multilabel(self, run, result, summary: dict, split: str) -> None:
        d, classes = run.run_dir, run.spec.classes
        if result.scores is not None and self._draw("the precision-recall curves", plot_pr_curves, *result.scores,
                                                    classes, d / "pr_curves.png", f"best weights on {split}"):
            self.files.append(d / "pr_curves.png")
        size = getattr(getattr(run, "world", None), "size", 1)  # under torchrun rank 0 sees its val shard only
        share = f" (rank 0's 1/{size} share)" if size > 1 and split == "val" else ""
        if result.mistakes and self._draw("the mistakes", plot_label_mistakes, result.mistakes, classes,
                                          summary["thresholds"], d / "mistakes.png",
                                          f"furthest from their labels on {split}{share}"):
            self.files.append(d / "mistakes.png")

    def _plot_mistakes(self, run, mistakes: list, split: str) -> None:
        size = getattr(getattr(run, "world", None), "size", 1)  # under torchrun rank 0 sees its shard only
        title = f"most confidently wrong on {split}" + (f" (rank 0's 1/{size} share)" if size > 1 else "")
        method = getattr(run.cfg, "cam", None)
        if mistakes and method:  # --cam: each mistake with the map of the class it was taken for (tudui explain's)
            drawn = self._draw("the mistakes' maps", lambda: plot_cam_mistakes(
                cam.mistake_maps(run.model, mistakes, run.spec, method, run.device), run.spec.classes,
                run.run_dir / "mistakes.png", f"{title}, {method} maps of the predicted class"))
        else:
            drawn = mistakes and self._draw("the mistakes", plot_mistakes, mistakes, run.spec.classes,
                                            run.run_dir / "mistakes.png", title)
        if drawn:
            self.files.append(run.run_dir / "mistakes.png")


def write_confusion_csv(confusion, classes: list[str], path: str | Path) -> Path:
    """Counts, rows = true class, columns = predicted, with a header row and column of class names."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["true\\predicted"] + list(classes))
        for c, row in zip(classes, confusion):
            w.writerow([c] + [int(v) for v in row])
    return Path(path)


def read_confusion_csv(path: str | Path) -> tuple[list[str], list[list[int]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0][1:], [[int(v) for v in r[1:]] for r in rows[1:]]


def write_per_class_csv(classes: list[str], metrics: dict, path: str | Path) -> Path:
    """class, precision, recall, f1, support (one row per class) from an evaluation result (engine.metrics.compute_metrics)."""
    pc = metrics["per_class"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        multi = "ap" in pc  # a multi-label model's: each class's average precision and threshold too
        w.writerow(["class", "precision", "recall", "f1", "support"] + (["ap", "threshold"] if multi else []))
        for i, row in enumerate(zip(classes, pc["precision"], pc["recall"], pc["f1"], pc["support"])):
            extra = ["" if pc["ap"][i] is None else f"{pc['ap'][i]:.6g}", f"{metrics['thresholds'][i]:.6g}"] \
                if multi else []
            w.writerow([row[0]] + [f"{v:.6g}" for v in row[1:4]] + [row[4]] + extra)
    return Path(path)


def write_eval_reports(result: dict, out_dir: str | Path) -> list[Path]:
    """`tudui eval`'s files: eval_<split>_confusion_matrix.png/.csv, eval_<split>_per_class.csv and (a single-label
    model) eval_<split>_risk_coverage.png in `out_dir`, and with `--cam` eval_<split>_mistakes.png (each mistake with
    its map, half and half); for a multi-label model eval_<split>_per_class.csv and eval_<split>_pr_curves.png.

    Named after the split so they sit beside a run's own confusion_matrix.png without replacing it.
    """
    out, split, classes = Path(out_dir), result["split"], result["classes"]
    out.mkdir(parents=True, exist_ok=True)
    if "confusion" not in result:  # a multi-label model: per-class figures (AP and threshold beside them), PR curves
        files = [write_per_class_csv(classes, result, out / f"eval_{split}_per_class.csv")]
        if result.get("scores"):
            png = out / f"eval_{split}_pr_curves.png"
            plot_pr_curves(result["scores"]["probs"], result["scores"]["targets"], classes, png,
                           f"{Path(result['checkpoint']).name} on {split}")
            files.append(png)
        return files
    png = out / f"eval_{split}_confusion_matrix.png"
    plot_confusion(result["confusion"], classes, png, f"{Path(result['checkpoint']).name} on {split}")
    files = [png, write_confusion_csv(result["confusion"], classes, out / f"eval_{split}_confusion_matrix.csv"),
             write_per_class_csv(classes, result, out / f"eval_{split}_per_class.csv")]
    if result.get("risk_coverage"):  # accuracy on the accepted images against the share accepted
        files.append(plot_risk_coverage(result["risk_coverage"], out / f"eval_{split}_risk_coverage.png",
                                        f"{Path(result['checkpoint']).name} on {split}", result.get("rejection")))
    if result.get("cam_mistakes"):  # `tudui eval --cam`: the mistakes with their class-activation maps
        found = result["cam_mistakes"]
        files.append(plot_cam_mistakes(found["items"], classes, out / f"eval_{split}_mistakes.png",
                                       f"most confidently wrong on {split}, {found['method']} maps of the predicted "
                                       "class"))
    return files


def plot_risk_coverage(curve: dict, path: str | Path, title: str, rejection: dict | None = None) -> Path:
    """Top-1 on the accepted images against the share accepted (engine/rejection.risk_coverage), the operating point
    of --reject-below / --reject auto marked when one was given."""
    fig = _figure(5, 4)
    ax = fig.subplots()
    ax.plot(np.asarray(curve["coverage"]) * 100, np.asarray(curve["accuracy"]) * 100, lw=1.5)
    if rejection is not None and np.isfinite(rejection.get("accepted_top1", np.nan)):
        ax.plot([100 * (1 - rejection["rejected"])], [100 * rejection["accepted_top1"]], "o", color="C3",
                label=f"threshold {rejection['threshold']:.4g}")
        ax.legend(fontsize=8, loc="lower left")
    ax.set(xlabel="images accepted (%)", ylabel="top-1 on the accepted images (%)", xlim=(0, 100),
           title=f"{title}\nrisk-coverage by {curve['score']}")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_cam_mistakes(items: list, classes: list[str], path: str | Path, title: str) -> Path:
    """The mistakes (probability, (H, W, C) uint8, true, predicted, (H, W) map in [0, 1]), each image and its map
    half and half (matplotlib's `jet`), as mistakes.png lays them out."""
    from matplotlib import colormaps

    heat = [colormaps["jet"](np.clip(m[4], 0, 1))[..., :3] for m in items]
    pictures = np.stack([0.5 * (m[1] / 255.0 if m[1].shape[-1] == 3 else np.repeat(m[1], 3, -1) / 255.0) + 0.5 * h
                         for m, h in zip(items, heat)])
    titles = [f"true {classes[t]}\npred {classes[p]} {c:.0%}" for c, _, t, p, _ in items]
    return _image_grid(pictures, titles, path, title, cols=4)
