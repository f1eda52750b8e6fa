"""TensorBoard event files in the run directory, through torch.utils.tensorboard.

Tags (x axis in brackets):
  step/train_loss                      cross-entropy of one training batch, every --log-every steps, and at least 4
                                       times an epoch (`log_interval`) [optimisation step]
  epoch/train_loss, epoch/val_loss     mean cross-entropy of the epoch's training batches and of validation [epoch]
  epoch/train_objective                mean training objective (--loss, with its label smoothing) [epoch]
  epoch/val_top1, epoch/val_top5       validation accuracy in [0, 1] (top-5 with more than 5 classes) [epoch]
  epoch/val_macro_f1, val_balanced_acc macro-F1 and balanced accuracy (mean recall) of the classes present [epoch]
  epoch/lr                             learning rate at the start of the epoch [epoch]
  train/first_batch (image)            the first augmented training batch, de-normalised
  train/first_batch_labels (image)     the same batch (up to 32 images) as a grid titled with class names, drawn
                                       with the PNGs' fonts (Chinese class names included)
  graph                                the model (traced once on a zero input)
  hparams                              the resolved config with the final metrics (hparam/...)
"""
from __future__ import annotations

import math
import sys
import warnings

import torch

from ..engine.callbacks import Callback


def _hparam_value(v):
    """TensorBoard's hparams take bool, int, float or str only."""
    if isinstance(v, (bool, int, float, str)):
        return v
    return "" if v is None else str(v)


def log_interval(log_every: int, steps_per_epoch: int) -> int:
    """Steps between two step/train_loss points: every `log_every` steps, but at least 4 points an epoch, so that a
    course-sized run (48 steps an epoch, --log-every 50) still draws a per-step curve."""
    return max(1, min(int(log_every), steps_per_epoch // 4))


class TensorBoardCallback(Callback):
    def __init__(self, log_every: int = 50, max_images: int = 64) -> None:
        self.log_every = max(1, int(log_every))
        self.every = self.log_every  # the interval used, log_interval's (set when the run starts)
        self.max_images = max_images
        self.writer = None
        self.logged_batch = False
        self.graph_done = False

    def on_fit_start(self, run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run redoes its interrupted epoch from step run.step: TensorBoard drops the step/* points the
        # killed process logged after that (epoch/* points use epochs 1..k <= run.step, so they are kept).
        self.writer = SummaryWriter(log_dir=str(run.run_dir), purge_step=run.step + 1 if run.step else None)
        self.every = log_interval(self.log_every, run.steps_per_epoch)
        self.graph_done = False  # the graph is traced after the first epoch, not before the first step: tracing
        # (with its check) takes 0.4 s for resnet18, as long as the rest of a cached run's start-up together

    def _add_graph(self, run) -> None:
        s = run.spec
        x = torch.zeros(1, s.channels, s.img_size, s.img_size, device=run.device)
        was_training = run.model.training
        try:
            with warnings.catch_warnings():  # tracing warns about data-dependent control flow; the graph is a picture
                warnings.simplefilter("ignore")
                self.writer.add_graph(run.model, x)
        except Exception as e:  # some architectures cannot be traced; the rest of the logging still works
            print(f"warning: TensorBoard graph skipped ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                  file=sys.stderr)
        finally:
            run.model.train(was_training)

    def on_train_batch(self, run, step, x, y, loss) -> None:
        if self.writer is None:
            return
        if not self.logged_batch:
            from ..data import denormalize

            images = denormalize(x[: self.max_images].detach().float(), run.spec)
            self.writer.add_images("train/first_batch", images, step, dataformats="NCHW")
            self._add_labelled_batch(images, y, run.spec.classes, step)
            self.logged_batch = True
        if step % self.every == 0:  # .item() syncs the device, so only every few steps
            self.writer.add_scalar("step/train_loss", loss.item(), step)

    def _add_labelled_batch(self, images, labels, classes, step: int) -> None:
        # TensorBoard's own image grid has no captions; a matplotlib figure carries the class names
        from .plots import batch_figure, render

        try:
            grid = render(batch_figure(images.cpu(), labels.cpu(), classes, "first training batch (augmented)"))
        except Exception as e:  # a picture must never cost the run
            print(f"warning: TensorBoard labelled batch skipped ({type(e).__name__}: {e})", file=sys.stderr)
            return
        self.writer.add_image("train/first_batch_labels", grid, step, dataformats="HWC")

    def on_epoch_end(self, run, row, val) -> None:
        if self.writer is None:
            return
        if not self.graph_done:
            self.graph_done = True
            self._add_graph(run)
        e = row["epoch"]
        top5 = run.spec.num_classes > 5  # top-5 of 5 classes or fewer is 100% by definition
        for key in ("train_loss", "train_objective", "val_loss", "val_top1", "val_top5", "val_macro_f1",
                    "val_balanced_acc", "lr", "val_map", "val_micro_f1"):  # the last two: multi-label runs
            if row.get(key, "") != "" and (top5 or key != "val_top5"):
                self.writer.add_scalar(f"epoch/{key}", float(row[key]), e)
        self.writer.flush()  # a crash later loses nothing already logged

    def on_fit_end(self, run, result) -> None:
        if self.writer is None:
            return
        metrics = {"hparam/best_epoch": float(run.best_epoch)}
        for split, summary in (("val", result.val), ("test", result.test)):
            if summary:
                for k in ("top1", "top5", "loss", "macro_f1", "balanced_accuracy", "map", "micro_f1"):
                    if summary.get(k) is not None and math.isfinite(summary[k]) and (k != "top5" or run.spec.num_classes > 5):
                        metrics[f"hparam/{split}_{k}"] = float(summary[k])
        hparams = {k: _hparam_value(v) for k, v in run.cfg.to_dict().items()}
        hparams |= {"img_size": run.spec.img_size, "channels": run.spec.channels}
        self._add_hparams(hparams, metrics, run.epoch)
        self.writer.flush()
        self.writer.close()
        self.writer = None

    def _add_hparams(self, hparams: dict, metrics: dict, step: int) -> None:
        # SummaryWriter.add_hparams writes into a new timestamped sub-folder (a separate "run" in TensorBoard);
        # writing the same three summaries into this run's own file keeps everything of a run in one place.
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        exp, ssi, sei = hparams_summary(hparams, metrics)
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
