"""What a training run prints: the first line (data, model, device and what `auto` chose), one line per epoch, the
early stop and the `done:` line, as a callback (engine/callbacks.py) on rank 0, like TensorBoard and the pictures.

api.train passes it to engine's `fit` first among the callbacks, so its lines come before anything another
callback prints at the same moment (a Ctrl-C message after the epoch's line, the pictures' file list after `done:`).

In a notebook (an IPython kernel, core/notebook.py) the epoch lines are one HTML table instead, updated in place as
each epoch ends, under the first line; the progress bar (core/console.Progress) is tqdm's notebook widget there. A
terminal or a log gets the same lines as ever.
"""
from __future__ import annotations

from ..core import __version__
from ..core.console import shown
from ..core.notebook import HTML, display, html_table, in_notebook
from ..core.modes import AUGMENTS
from ..data.images import resize_side
from ..engine.callbacks import Callback
from ..engine.optim import warms_up
from ..models import count_parameters


class ConsoleCallback(Callback):
    def __init__(self) -> None:
        self.table = None  # in a notebook: the display handle of the epoch table

    def on_fit_start(self, run) -> None:
        print(first_line(run), flush=True)
        for note in run.notes:
            print(f"note: {note}", flush=True)

    def on_epoch_end(self, run, row: dict, val: dict | None) -> None:
        peak = run.cfg.lr if warms_up(run.cfg, run.steps_per_epoch) else None  # epoch 1 starts the warm-up
        if not in_notebook():
            print(epoch_line(row, run.cfg.epochs, run.spec.num_classes, peak, run.cfg.best_by), flush=True)
            return
        table = HTML(epoch_table(run.history, run.cfg.epochs, run.spec.num_classes))
        if self.table is None:
            self.table = display(table, display_id=True)
        else:
            self.table.update(table)

    def on_train_end(self, run) -> None:
        if run.stopped_early:
            what = {"balanced-accuracy": "balanced accuracy", "macro-f1": "macro-F1"}.get(run.cfg.best_by, "top-1")
            print(f"early stop: no better validation {what} (nor the same at a lower loss) for {run.cfg.patience} "
                  f"epoch(s); best was epoch {run.best_epoch}")

    def on_fit_end(self, run, result) -> None:
        parts = [f"best epoch {run.best_epoch}"]
        if result.val and "map" in result.val:  # multi-label: mAP, macro F1 and exact match at the thresholds
            parts.append(_multi(result.val, "val"))
        elif result.val:
            parts.append(f"val top1 {result.val['top1']:.2%}")
            ranked = _ranked_figure(run.cfg.best_by, result.val).strip()
            parts += [f"val {ranked}"] if ranked else []
        if result.test and "map" in result.test:
            parts.append(_multi(result.test, "test"))
        elif result.test:
            t = result.test
            top5 = f" top5 {t['top5']:.2%}" if shows_top5(run.spec.num_classes) else ""
            parts.append(f"test top1 {t['top1']:.2%}{top5} loss {t['loss']:.4f}")
        print("done: " + ", ".join(parts) + f"; weights: {shown(result.best)}", flush=True)


def _multi(m: dict, split: str) -> str:
    return f"{split} mAP {m['map']:.2%} macro-F1 {m['macro_f1']:.2%} exact match {m['exact_match']:.2%}"


def shows_top5(num_classes: int | None) -> bool:
    """Top-5 accuracy says something only with more than 5 classes (with 5 or fewer it is 100% by definition)."""
    return num_classes is None or num_classes > 5


def _ranked_figure(best_by: str | None, val: dict) -> str:
    """'  balanced accuracy 71.20%' or '  macro-F1 0.684' where --best-by ranks epochs by it, else ''."""
    if best_by == "balanced-accuracy" and val.get("balanced_accuracy", "") != "":
        return f"  balanced accuracy {val['balanced_accuracy']:.2%}"
    if best_by == "macro-f1" and val.get("macro_f1", "") != "":
        return f"  macro-F1 {val['macro_f1']:.3f}"
    return ""


def epoch_line(row: dict, epochs: int, num_classes: int | None = None, peak_lr: float | None = None,
               best_by: str | None = None) -> str:
    """'epoch 3/10  train_loss 0.4123  val_loss ...  lr 0.002  4.1s  14592 img/s' from a results.csv row.

    Both losses are plain cross-entropy (engine/results.py). Top-5 is left out for `num_classes` of 5 or fewer. The
    first epoch of a schedule that warms up to `peak_lr` (--lr) from a lower rate says so: `lr 0.003 (warm-up from
    0.00012)`, the rate asked for first; the row's lr is the rate at the epoch's start. The figure --best-by ranks
    epochs by (`best_by` balanced-accuracy or macro-f1) follows top-1."""
    top5 = f"  top5 {row['val_top5']:.2%}" if shows_top5(num_classes) and row["val_top5"] != "" else ""
    top5 += _ranked_figure(best_by, {"balanced_accuracy": row.get("val_balanced_acc", ""),
                                     "macro_f1": row.get("val_macro_f1", "")})
    val = f"val_loss {row['val_loss']:.4f}  top1 {row['val_top1']:.2%}{top5}  " if row["val_top1"] != "" else ""
    if row.get("val_map", "") != "":  # multi-label: top1 is the exact-match ratio
        val = (f"val_loss {row['val_loss']:.4f}  mAP {row['val_map']:.2%}  macro-F1 {row['val_macro_f1']:.2%}  "
               f"exact {row['val_top1']:.2%}  ")
    lr = f"lr {row['lr']:.3g}"
    if row["epoch"] == 1 and peak_lr is not None and row["lr"] < peak_lr * (1 - 1e-6):
        lr = f"lr {peak_lr:.3g} (warm-up from {row['lr']:.3g})"
    return (f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  {val}{lr}  "
            f"{row['epoch_time_s']:.1f}s  {row['images_per_s']:.0f} img/s")


def epoch_table(rows: list[dict], epochs: int, num_classes: int | None = None) -> str:
    """results.csv rows as the HTML table a notebook shows while training: the columns of epoch_line."""
    top5 = shows_top5(num_classes)
    headers = ["epoch", "train_loss", "val_loss", "top1", *(["top5"] if top5 else []), "lr", "time", "img/s"]

    def cell(v, fmt: str) -> str:
        return format(v, fmt) if v != "" else ""

    body = [[f"{r['epoch']}/{epochs}", f"{r['train_loss']:.4f}", cell(r["val_loss"], ".4f"), cell(r["val_top1"], ".2%"),
             *([cell(r["val_top5"], ".2%")] if top5 else []), f"{r['lr']:.3g}", f"{r['epoch_time_s']:.1f}s",
             f"{r['images_per_s']:.0f}"] for r in rows]
    return html_table(headers, body)


def first_line(run) -> str:
    """'tudui 0.x: MODEL (N params) on DATA: sizes, classes, input shape, where the images are, device, what the run
    chose for the user -> run directory'."""
    d, s = run.data, run.spec
    sizes = f"{len(d.train):,} train" + (f" / {len(d.val):,} val" if d.val else "") + \
        (f" / {len(d.test):,} test" if d.test else "")
    options = run.cfg.to_dict()  # objects given to the library appear as descriptions
    return (f"tudui {__version__}: {run.arch['name']} ({count_parameters(run.model):,} params) on "
            f"{', '.join(map(shown, options['data']))}: "
            f"{sizes}, {s.num_classes} classes, {s.channels}x{s.img_size}x{s.img_size}, "
            f"{'; '.join(d.notes) if d.notes else ('in memory' if d.in_memory else 'from files')}, "
            f"device {run.device}{_world_note(run)}, {'; '.join(_chosen(run))} -> {shown(run.run_dir)}")


def _chosen(run) -> list[str]:
    """What the run chose for the user: augmentation and evaluation crop, precision, workers, cached features."""
    s, d = run.spec, run.data
    crop = f"eval resize {resize_side(s.img_size, s.crop_pct)} + centre crop {s.img_size}" if s.crop_pct else \
        "eval squash"
    augment = f"augment {d.augment}" + (" (RGB photos)" if d.photo and run.cfg.augment == "auto" else "")
    unflipped = AUGMENTS[d.augment].without_flip()
    if unflipped and not s.hflip:  # digits: a mirrored 2 is no 2 (data/sources.NAMED)
        augment = f"augment {unflipped} (flips would change this data's labels; " \
                  "--hflip allows them)"
    out = [f"{augment}, {crop}"]
    out += run.choices
    if run.head_trainer is not None:
        out.append(f"head on cached features ({run.head_trainer.max_views} view(s))")
    return out


def _world_note(run) -> str:
    """', 2 processes x batch 256 = global batch 512' under torchrun (--batch-size is per process)."""
    w = run.world
    return f", {w.size} processes x batch {run.cfg.batch_size} = global batch {w.size * run.cfg.batch_size}" \
        if w.enabled else ""
