"""Training: `fit(cfg)` sets a run up (engine/setup.py), then runs a loop that fits on one screen.

`train_one_epoch` and `validate` are the loop; what an epoch trains on is a `Feed` (engine/step.py): the training
images, or the head's cached features while the backbone is frozen (engine/features.py). Saving, the --time budget
and the final evaluation of the best weights are here too. Everything else comes in as callbacks from the layers
above (api.py): what the run prints (reporting/console.py), TensorBoard, pictures, Ctrl-C handling.
"""
from __future__ import annotations

import errno
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

from ..core.checkpoint import save_checkpoint
from ..core.config import TrainConfig, load_yaml, save_yaml
from ..core.console import Progress, shown
from ..core.errors import TuduiError
from ..core.options import option_text
from ..core.files import write_text
from ..data import eval_batch_size, make_loader
from ..models.surgery import head_path
from . import distributed, features, finetune
from .calibration import ECE_BINS, calibrate_logits, collect_logits, fit_class_temperatures, multilabel_report
from .callbacks import Callback
from .choices import BEST_BY_METRIC
from .evaluate import evaluate, kept_logits
from .guards import FiniteLossGuard
from .metrics import TopMistakes
from .multilabel import LabelMistakes, evaluate_multilabel
from .optim import continue_schedule, create_scheduler
from .results import append_result
from .resume import gather_rank_rng
from .run import Run, RunResult
from .setup import setup
from .signals import resume_command
from .step import Feed


def optimizer_step(run: Run) -> None:
    """Unscale (fp16), clip (--clip-grad), step, schedule, EMA; gradients cleared for the next step."""
    if run.cfg.clip_grad:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.step += 1
    if run.ema is not None:
        run.ema.update(run.model)


def image_feed(run: Run, epoch: int) -> Feed:
    """The training loader's batches for `epoch`, on the device: augmented, normalised, mixed; the run's step."""
    loader, dev = run.train_loader, run.device
    getattr(loader, "set_epoch", getattr(getattr(loader, "sampler", None), "set_epoch", lambda e: None))(epoch)

    def batches():
        for x, y in loader:
            x = run.prepare(x.to(dev, non_blocking=True), train=True)  # (B, C, H, W) float
            yield run.mix(x, y.to(dev, non_blocking=True))  # y: (B,) classes, or (B, K) soft targets when mixing
    return Feed(batches(), len(loader), run.train_step, f"epoch {epoch + 1}/{run.cfg.epochs}")


def train_one_epoch(run: Run, epoch: int) -> dict:
    """Train epoch `epoch` (0-based): every batch of its feed through the run's step, an optimiser step every
    --accumulate batches, the callbacks after each. The feed is the images, or the head's cached features while
    the backbone is frozen. Returns {train_loss, train_objective, epoch_time_s, images_per_s} over all ranks:
    train_loss the plain cross-entropy of the batches as trained (validation's measure), train_objective --loss's."""
    dev, acc, t0 = run.device, run.cfg.accumulate, time.perf_counter()
    run.train_module.train()
    if finetune.frozen_phase(run.cfg, epoch):  # the frozen backbone in eval mode: its BatchNorm statistics kept
        finetune.set_frozen_modes(run.model, head_path(run.model))
    feed = run.head_trainer.feed(epoch) if features.active(run.head_trainer, run, epoch) else image_feed(run, epoch)
    progress = Progress(feed.count, feed.label, enabled=run.world.rank == 0)
    sums, seen = torch.zeros(2, device=dev, dtype=torch.float64), 0  # (cross-entropy, objective) x images
    run.optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(feed.batches):
        loss, ce = feed.step(x, y)  # forward, loss, backward of loss / acc: gradients summed over `acc` batches
        sums += torch.stack([ce.double(), loss.detach().double()]) * len(y)
        seen += len(y)
        if (i + 1) % acc and i + 1 < feed.count:
            progress.update(1)
            continue
        optimizer_step(run)
        shown = torch.where(loss.isfinite(), ce, loss.detach())  # a non-finite objective reaches FiniteLossGuard
        for cb in run.callbacks:
            cb.on_train_batch(run, run.step, *(feed.shown or (x, y)), shown)
        if progress.due():  # .item() syncs the device: only when something is shown
            progress.update(1, loss=f"{sums[0].item() / seen:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        else:
            progress.update(1)
    progress.close()
    # Over all ranks: the mean losses of every image trained on, images/s of the whole job.
    (ce, objective), seen, dt = distributed.reduce_train_stats(sums.tolist(), seen, time.perf_counter() - t0, dev)
    return {"train_loss": ce / max(seen, 1), "train_objective": objective / max(seen, 1), "epoch_time_s": dt,
            "images_per_s": seen / dt}


def validate(run: Run, epoch: int, criterion: nn.Module) -> dict | None:
    """The validation summary of the weights best.pt would get (None without validation data).

    In full precision whatever --amp trains in, as the final evaluation of best.pt, `tudui eval` and predict are:
    every validation figure of a run is then the one a later evaluation of the same weights gives (under bf16
    autocast a few images near a decision boundary change class, so top-1 moved by tenths of a point and best.pt
    was chosen on figures no later evaluation reproduced). Its cost is a forward pass of the validation split."""
    if features.active(run.head_trainer, run, epoch):  # the head alone, on cached features
        return run.head_trainer.evaluate(run.eval_model, criterion)
    if run.spec.multi_label:  # mAP, F1s, exact match at thresholds chosen on this split (engine/multilabel.py)
        return evaluate_multilabel(run.eval_model, run.val_loader, run.spec, run.device, run.cfg.threshold,
                                   gather=True) if run.val_loader else None  # torchrun: every rank's shard
    return evaluate(run.eval_model, run.val_loader, run.spec, run.device, criterion) if run.val_loader else None


def score(run: Run, val: dict | None) -> float:
    """The validation figure --best-by ranks epochs by (top-1, balanced accuracy or macro-F1; a multi-label model's
    mAP, or its macro-F1 under --best-by macro-f1); -1 without one."""
    if val is None or run.cfg.best_by not in BEST_BY_METRIC:
        return -1.0
    if "map" in val and run.cfg.best_by != "macro-f1":  # multi-label (engine/multilabel.py): no top-1 to rank by
        return val["map"]
    return val[BEST_BY_METRIC[run.cfg.best_by]]


def improves(run: Run, val: dict | None) -> bool:
    """Whether `val` beats the best epoch so far: a higher validation score (--best-by: top-1, balanced accuracy or
    macro-F1), or the same score at a lower validation loss (of two epochs that classify as well, the one surer of
    its answers); with --best-by last (auto on a validation split too small to rank epochs: engine/choices.py)
    every epoch does."""
    if val is None or run.cfg.best_by == "last":  # --best-by last: every epoch replaces best.pt
        return True
    best = next((r for r in run.history if r["epoch"] == run.best_epoch and r["val_loss"] != ""), None)
    best_loss = float(best["val_loss"]) if best else math.inf
    now = score(run, val)
    return now > run.best_score or (now == run.best_score and val["loss"] < best_loss)


def epoch_row(epoch: int, stats: dict, val: dict | None, lr: float) -> dict:
    """The results.csv row of epoch `epoch` (1-based): train_loss and val_loss are both plain cross-entropy."""
    v = val or {}
    row = {"epoch": epoch, "train_loss": stats["train_loss"], "val_loss": v.get("loss", ""),
           "val_top1": v.get("top1", ""), "val_top5": "" if v.get("top5") is None else v["top5"], "lr": lr,
           "epoch_time_s": stats["epoch_time_s"], "images_per_s": stats["images_per_s"],
           "train_objective": stats["train_objective"], "val_macro_f1": v.get("macro_f1", ""),
           "val_balanced_acc": v.get("balanced_accuracy", "")}
    if "map" in v:  # multi-label: val_top1 is the exact-match ratio; these beside it
        row |= {"val_map": v["map"], "val_micro_f1": v["micro_f1"]}
    return row


class TimeBudget:
    """--time MINUTES: after each epoch, the epochs that fit in the time left set the run's length, and the
    learning-rate schedule is stretched or shrunk to end with them (as Ultralytics' `time=`). Under torchrun
    rank 0's clock decides for every rank, so all stop together."""

    def __init__(self, minutes: float, start_epoch: int) -> None:
        self.seconds, self.start, self.start_epoch = minutes * 60, time.perf_counter(), start_epoch

    def epochs_that_fit(self, done: int) -> int:
        elapsed = time.perf_counter() - self.start
        per_epoch = elapsed / max(1, done - self.start_epoch)  # seconds, validation and saving included
        return max(done, done + int((self.seconds - elapsed) // per_epoch))

    def plan(self, run: Run) -> None:
        epochs = distributed.on_main(self.epochs_that_fit, run.epoch)
        if epochs == run.cfg.epochs:
            return
        run.cfg.epochs = epochs
        run.scheduler = create_scheduler(run.cfg, run.optimizer, run.steps_per_epoch)
        continue_schedule(run.scheduler, run.step)
        if run.world.rank == 0:
            save_yaml(load_yaml(run.run_dir / "config.yaml") | {"epochs": epochs}, run.run_dir / "config.yaml")


def fit(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> RunResult:
    """Train as `cfg` says: set-up, the epochs (validated, saved, reported to `callbacks` on rank 0), then the
    final evaluation of the best weights; returns the RunResult. Under torchrun every process calls it.

    `fit` itself prints no report: the console lines (the first line, one per epoch, `done:`) come from
    reporting.console.ConsoleCallback, which api.train passes in with TensorBoard, the pictures and Ctrl-C.
    A run stopped by a callback's exception (Ctrl-C, a non-finite loss) keeps last.pt of its last whole epoch.
    """
    with distributed.session(cfg.device):  # joins the torchrun job, if any
        try:
            return _fit(cfg, callbacks)
        except ValueError as e:  # torch's BatchNorm refuses to train on one value per channel
            if "more than 1 value per channel" not in str(e):
                raise
            raise TuduiError(f"a BatchNorm layer of the model got one value per channel to train on "
                             f"({str(e).splitlines()[0]}): a batch of one image whose feature map is 1x1 there; "
                             f"use {option_text('batch_size', 2)} or more (now {cfg.batch_size}; a training set of one "
                             f"image cannot train it either) or a larger {option_text('img_size')}") from None


def _fit(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> RunResult:
    run = setup(cfg, [FiniteLossGuard(), *(callbacks or [])])  # rank 0 keeps them
    try:
        return _train(run)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not _inside(e.filename, run.run_dir):
            raise
        # e.g. the run directory made read-only (or its disk remounted so) while the run writes it
        raise TuduiError(f"cannot write in {shown(run.run_dir)} ({e.strerror}); "
                         f"{'last.pt holds epoch ' + str(run.saved) if run.saved >= 0 else 'no epoch was saved'}. "
                         f"Make it writable again and continue with: {resume_command(run)}") from None
    finally:
        run.close()


def _inside(path, folder: Path) -> bool:
    """Whether the file an OSError names is `folder` or in it (not, say, an unreadable image)."""
    if not path:
        return False
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def _train(run: Run) -> RunResult:
    """The epochs, then the final evaluation of the best weights."""
    cfg = run.cfg
    for cb in run.callbacks:
        cb.on_fit_start(run)
    plain_ce = nn.CrossEntropyLoss()  # validation loss is comparable across recipes
    if run.epoch == 0:  # a run is resumable from its first step on (engine/resume.py)
        _save(run, ["last.pt"])
    stale = run.epoch - run.best_epoch if run.history else 0  # epochs since the best one (resumed runs)
    budget = TimeBudget(cfg.time, run.epoch) if cfg.time else None
    epoch = run.epoch
    while epoch < cfg.epochs and not run.final_only:
        finetune.begin_epoch(run, epoch)  # --fine-tune: unfreeze the backbone at its epoch
        lr = run.optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(run, epoch)
        val = validate(run, epoch, plain_ce)
        run.epoch = epoch + 1
        improved = improves(run, val)
        row = epoch_row(run.epoch, stats, val, lr)
        run.history.append(row)
        if improved:
            run.best_score, run.best_epoch, stale = score(run, val), run.epoch, 0
            if run.spec.multi_label and val:  # the thresholds chosen with these weights travel with them
                run.spec.thresholds = val["thresholds"]
        else:
            stale += 1
        _save(run, ["last.pt", "best.pt"] if improved else ["last.pt"])  # val is the same on every rank
        if run.world.rank == 0:
            append_result(run.run_dir / "results.csv", row)
        for cb in run.callbacks:
            cb.on_epoch_end(run, row, val)
        if cfg.patience is not None and stale >= cfg.patience:
            run.stopped_early = True  # no better epoch (trainer.improves) for --patience epochs
            break
        if budget is not None:
            budget.plan(run)  # after each epoch: how many fit in what is left of --time
        epoch += 1
    for cb in run.callbacks:
        getattr(cb, "on_train_end", lambda run: None)(run)  # (a hook newer than some callbacks written for tudui)
    return _finish(run, plain_ce)


def _save(run: Run, names: list[str]) -> None:
    """Rank 0 writes the checkpoint(s); under torchrun it also holds every rank's augmentation RNG state."""
    rank_rng = gather_rank_rng(run)  # a collective: every rank calls it
    if run.world.rank == 0:
        for name in names:
            payload = run.checkpoint(best=name == "best.pt")
            payload["resume"] |= rank_rng
            save_checkpoint(payload, run.run_dir / name)
            if name == "last.pt":
                run.saved = run.epoch


def _finish_multilabel(run: Run) -> RunResult:
    """The best weights on validation (thresholds chosen there, as best.pt holds them) and on test data at those
    thresholds. The split the pictures use (val, else test) also gives the images furthest from their labels
    (mistakes.png: missed and spurious labels; under torchrun rank 0's shard of val) and every image's probabilities
    (the precision-recall curves). Under torchrun the validation shards' scores are gathered, and every rank scores
    the whole test split.

    --calibrate on (one process, with validation data): first one temperature per class is fitted on the validation
    logits (engine/calibration.py), then the final pass chooses the thresholds on the calibrated probabilities (or
    applies --threshold to them), so best.pt's temperatures and thresholds, metrics.json and the pictures all speak
    of the probabilities predict reports."""
    temperature = None
    if run.cfg.calibrate == "on" and run.val_loader is not None and run.world.size == 1:
        val_logits, val_targets = collect_logits(run.model, run.val_loader, run.spec, run.device)
        temperature = fit_class_temperatures(val_logits, val_targets)
    mistakes, kept = LabelMistakes(), {}
    val = evaluate_multilabel(run.model, run.val_loader, run.spec, run.device, run.cfg.threshold,
                              mistakes=mistakes, keep=kept, gather=True,
                              temperature=temperature) if run.val_loader else None
    if temperature is not None:  # the thresholds of the calibrated probabilities, which the test split is scored at
        run.spec.thresholds = val["thresholds"]
    test, tested = None, {}
    if run.data.test is not None:
        loader = make_loader(run.data.test, run.spec, eval_batch_size(run.cfg.batch_size), False, run.device,
                             workers=run.workers, bad_images=run.cfg.bad_images, in_memory=run.data.in_memory)
        pictured = val is None  # the test split is pictured only without a validation split
        test = evaluate_multilabel(run.model, loader, run.spec, run.device, run.cfg.threshold, tune=False,
                                   mistakes=mistakes if pictured else None, keep=kept if pictured else tested,
                                   temperature=temperature)
    if temperature is not None and run.world.rank == 0:
        best = run.run_dir / "best.pt"
        ckpt = torch.load(best, map_location="cpu", weights_only=True)
        ckpt["temperature"], ckpt["data"]["thresholds"] = temperature, val["thresholds"]
        save_checkpoint(ckpt, best)
        run.calibration = {"temperature": temperature, "bins": ECE_BINS, "multi_label": True,
                           "val": multilabel_report(val_logits, val_targets, temperature),
                           "test": multilabel_report(tested["logits"], torch.from_numpy(tested["targets"]),
                                                     temperature) if test is not None else None}
    result = RunResult(run.run_dir, run.run_dir / "best.pt", run.run_dir / "last.pt", run.history, val, test,
                       run.spec, mistakes.items if kept else None, run.best_epoch, run.arch["name"],
                       ", ".join(map(shown, run.cfg.to_dict()["data"])),
                       scores=(kept["probs"], kept["targets"]) if kept else None)
    if run.world.rank != 0:
        return result
    for cb in run.callbacks:
        cb.on_fit_end(run, result)
    _write_metrics(run, val, test)
    return result


def _write_metrics(run: Run, val: dict | None, test: dict | None) -> None:
    """metrics.json, last: it says the final evaluation is complete (`--resume` of a run without it does that
    evaluation). With `calibration` (--calibrate on): the temperature (a multi-label model's: one per class), the
    bins, and on val and test the ECE and NLL before and after (the reliability tables are the PNG's)."""
    summary = {"best_epoch": run.best_epoch, "epoch": run.epoch, "val": val, "test": test}
    if run.calibration is not None:
        c = run.calibration
        summary["calibration"] = {"temperature": c["temperature"], "bins": c["bins"],
                                  **({"multi_label": True} if c.get("multi_label") else {}),
                                  **{split: {k: v for k, v in r.items() if not k.startswith("reliability")}
                                     for split in ("val", "test") if (r := c[split]) is not None}}
    write_text(run.run_dir / "metrics.json", json.dumps(summary, indent=1, ensure_ascii=False))


def _calibrates(run: Run) -> bool:
    """Whether the run ends by fitting a temperature: --calibrate on, with validation data, in one process (under
    torchrun each rank holds a share of the split: `tudui calibrate` the run afterwards)."""
    return run.cfg.calibrate == "on" and run.val_loader is not None and run.world.size == 1


def _calibrate(run: Run, best: Path, val_kept: list, test_kept: list | None) -> dict:
    """--calibrate on (_calibrates): the temperature fitted on the validation logits of the final evaluation
    (engine/calibration.py: the same pass, not a second one over val and test), written into best.pt with the
    validation scores' quantiles that --reject auto reads (engine/rejection.py)."""
    k = run.spec.num_classes
    found = calibrate_logits(kept_logits(val_kept, k), kept_logits(test_kept, k) if test_kept is not None else None)
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    ckpt["temperature"], ckpt["rejection"] = found["temperature"], found["rejection"]
    save_checkpoint(ckpt, best)
    return found


def _finish(run: Run, criterion: nn.Module) -> RunResult:
    """Reload the best weights and report them on validation and test data."""
    best = run.run_dir / "best.pt"
    if run.world.rank == 0:  # the file is on rank 0's machine; the weights go to the others
        saved = torch.load(best, map_location=run.device, weights_only=True)
        run.model.load_state_dict(saved["model"])
        run.spec.thresholds = saved["data"].get("thresholds") if run.spec.multi_label else None
    distributed.broadcast_module(run.model)
    if run.spec.multi_label:
        return _finish_multilabel(run)
    mistakes = TopMistakes()
    # what --calibrate fits the temperature on: the logits of this very pass over val and test
    calibrating = _calibrates(run)
    val_kept = [] if calibrating else None
    test_kept = [] if calibrating and run.data.test is not None else None
    val = evaluate(run.model, run.val_loader, run.spec, run.device, criterion, mistakes=mistakes, kept=val_kept) \
        if run.val_loader else None
    test = None
    if run.data.test is not None:
        test_loader = make_loader(run.data.test, run.spec, eval_batch_size(run.cfg.batch_size), False, run.device,
                                  workers=run.workers, bad_images=run.cfg.bad_images, rank=run.world.rank,
                                  world_size=run.world.size, in_memory=run.data.in_memory)
        test = evaluate(run.model, test_loader, run.spec, run.device, criterion,
                        mistakes=None if val is not None else mistakes, kept=test_kept)
    run.calibration = _calibrate(run, best, val_kept, test_kept) if calibrating else None
    result = RunResult(run.run_dir, best, run.run_dir / "last.pt", run.history, val, test, run.spec,
                       mistakes.items if val is not None or test is not None else None, run.best_epoch,
                       run.arch["name"], ", ".join(map(shown, run.cfg.to_dict()["data"])))
    if run.world.rank != 0:
        return result
    for cb in run.callbacks:  # the `done:` line (reporting/console.py), the pictures
        cb.on_fit_end(run, result)
    _write_metrics(run, val, test)
    return result
