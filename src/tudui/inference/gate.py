"""The accuracy gate of `tudui export`: an export scored on the validation split against the PyTorch model.

A parity check on a few sample inputs proves an fp32 file computes the same function; an int8 file computes a
different one on purpose, and only real images say by how much. So every export is run on the training run's
validation split (re-created from its `--val-split` and `--seed`, or the data's val/ folder) beside the PyTorch
model: top-1 of both, and the class whose recall fell most. A top-1 drop above `--max-drop` points refuses the
export (nothing is written) unless `--force`; the figures go into the file's metadata and are printed.

The same module picks the calibration images of an int8 export: `--calib N` training images (the training split,
less that hold-out), as many of each class as there are (class-balanced), seeded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..core.errors import TuduiError
from ..data import DataSpec, eval_layout, load_decoded, load_eval_split, make_loader, normalize
from ..data.transforms import model_logits
from ..engine.multilabel import average_precision

GATE_BATCH = 256  # images per forward pass while scoring


class AccuracyDropError(TuduiError):
    """The export's top-1 on the validation split fell more than --max-drop below the PyTorch model's."""


@dataclass
class Accuracy:
    """What the gate measured (percent and percentage points); stored in the export's metadata as `validation`."""

    split: str  # "val"
    images: int
    top1: float  # the export's top-1, %
    top1_pytorch: float  # the PyTorch model's, same images, %
    drop: float  # top1_pytorch - top1, points (negative: the export is better)
    worst_class: str  # the class whose recall fell most
    worst_class_drop: float  # its fall, points
    max_drop: float  # the gate it was held to
    forced: bool = False  # written although drop > max_drop (--force)
    measure: str = "top-1"  # what top1/drop measure: top-1, or a multi-label model's mAP (worst class: its AP)

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def line(self, fmt: str) -> str:
        verdict = "ok" if self.drop <= self.max_drop else ("FORCED" if self.forced else "REFUSED")
        return (f"validation ({self.split}, {self.images} images): {fmt} {self.measure} {self.top1:.2f}% vs PyTorch "
                f"{self.top1_pytorch:.2f}% (drop {self.drop:+.2f} points, --max-drop {self.max_drop:g}); largest "
                f"per-class drop {self.worst_class_drop:+.2f} points ({self.worst_class}) -> {verdict}")


def _entries(cfg: dict, data: list | None) -> list:
    entries = data or cfg.get("data") or []
    return [entries] if isinstance(entries, str) else list(entries)


def _split(cfg: dict, data: list | None, spec: DataSpec, which: str):
    """The run's `which` split (val or train), in the model's class order; TuduiError when it cannot be read."""
    entries = _entries(cfg, data)
    if not entries:
        raise TuduiError("the checkpoint names no training data")
    chosen, _ = load_eval_split(entries, which, cfg.get("data_root"), cfg.get("val_split", 0.1), cfg.get("seed", 0))
    return chosen.reindex(spec.classes)


def validation_batches(cfg: dict, data: list | None, spec: DataSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(uint8 (B, C, S, S) images, int64 (B,) targets)] of the run's validation split, decoded once (both models
    are scored on the same tensors). cfg: the checkpoint's training config (data, data_root, val_split, seed);
    data: other data to take the split from instead."""
    chosen = _split(cfg, data, spec, "val")
    if len(chosen) == 0:
        raise TuduiError("the validation split is empty")
    chosen, in_memory, _ = load_decoded(chosen, eval_layout(spec))
    loader = make_loader(chosen, spec, GATE_BATCH, False, torch.device("cpu"), in_memory=in_memory)
    return [(x.cpu(), y.cpu()) for x, y in loader]


def calibration_images(cfg: dict, data: list | None, spec: DataSpec, n: int, seed: int = 0) -> torch.Tensor:
    """(n', C, S, S) normalised float32: about `n` training images, the same number of each class (fewer where a
    class has fewer), seeded; the hold-out of validation images is left out."""
    chosen = _split(cfg, data, spec, "train")
    rng = np.random.default_rng(seed)
    per_class = max(1, -(-n // spec.num_classes))  # ceil
    picked = []
    for c in range(spec.num_classes):
        # a multi-label split's targets are (N, K) multi-hot: the images carrying class c
        idx = np.flatnonzero(chosen.targets[:, c] > 0 if chosen.targets.ndim == 2 else chosen.targets == c)
        picked.append(rng.permutation(idx)[:per_class])
    # cut to n by rank within its class (every class's first image, then every class's second, ...), so a cut
    # never drops whole classes
    rank = np.concatenate([np.arange(len(p)) for p in picked])
    order = np.concatenate(picked)[np.argsort(rank, kind="stable")]
    index = np.sort(order[np.sort(np.unique(order, return_index=True)[1])][:n])  # an image of several classes once
    if len(index) == 0:
        raise TuduiError("the training split has no images to calibrate the int8 model on")
    sub, _, _ = load_decoded(chosen.subset(index), eval_layout(spec), cache="off")
    loader = make_loader(sub, spec, GATE_BATCH, False, torch.device("cpu"))
    return torch.cat([normalize(x.cpu(), spec) for x, _ in loader])


def _recall(pred: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """(k,) percent of each class's images predicted as that class (NaN for a class with no images)."""
    hits = np.bincount(target[pred == target], minlength=k).astype(float)
    total = np.bincount(target, minlength=k).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * hits / total


def score(reference: Callable, exported: Callable, batches: list, spec: DataSpec, max_drop: float) -> Accuracy:
    """Both models on the same validation batches: top-1 of each and the largest per-class recall drop (a
    multi-label model: mAP of each and the largest per-class average-precision drop)."""
    outs: dict[str, list] = {"ref": [], "exp": []}
    targets = []
    with torch.no_grad():
        for raw, y in batches:
            x = normalize(raw, spec)  # (B, C, S, S) float32
            outs["ref"].append(model_logits(reference, x, spec).float())
            outs["exp"].append(model_logits(exported, x, spec).float())
            targets.append(y)
    if spec.multi_label:  # (N, K) multi-hot targets: ranked by average precision, as training ranks its epochs
        t = torch.cat(targets).float()
        ap_ref, ap_exp = (100 * average_precision(torch.cat(outs[k]).sigmoid(), t) for k in ("ref", "exp"))  # (K,)
        class_drop = (ap_ref - ap_exp).numpy()
        present = np.flatnonzero(~np.isnan(class_drop))
        top_ref, top_exp = float(np.nanmean(ap_ref.numpy())), float(np.nanmean(ap_exp.numpy()))
        measure = "mAP"
    else:
        t = torch.cat(targets).numpy()
        ref, exp = (torch.cat(outs[k]).argmax(1).numpy() for k in ("ref", "exp"))
        top_ref, top_exp = 100 * float((ref == t).mean()), 100 * float((exp == t).mean())
        class_drop = _recall(ref, t, spec.num_classes) - _recall(exp, t, spec.num_classes)
        present = np.flatnonzero(~np.isnan(class_drop))
        measure = "top-1"
    worst = int(present[np.argmax(class_drop[present])])
    return Accuracy("val", len(t), top_exp, top_ref, top_ref - top_exp, spec.classes[worst],
                    float(class_drop[worst]), max_drop, measure=measure)


def check(acc: Accuracy, fmt: str, force: bool) -> Accuracy:
    """Refuse (AccuracyDropError, the figures in its one line) an export whose drop exceeds the gate, unless forced."""
    if acc.drop > acc.max_drop + 1e-9:
        if not force:
            raise AccuracyDropError(
                f"{fmt} export refused: {acc.measure} on the validation split ({acc.images} images) is {acc.top1:.2f}%, "
                f"{acc.drop:.2f} points below PyTorch's {acc.top1_pytorch:.2f}% (--max-drop {acc.max_drop:g}); "
                f"largest per-class drop {acc.worst_class_drop:.2f} points ({acc.worst_class}); nothing was written. "
                "Raise --max-drop, calibrate on more images (--calib), or --force to write it anyway")
        acc.forced = True
    return acc


def batches_of(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), size):
        yield x[i:i + size]
