"""Multi-label training and evaluation: a sigmoid per class, its loss, its metrics and its thresholds.

A multi-label model scores each class on its own (sigmoid of its logit); an image carries every class whose
probability reaches that class's threshold. Per epoch the validation split is scored as a whole (average precision
needs every image's score, not counts): mAP (the macro average of each class's average precision, as
scikit-learn's `average_precision_score(average="macro")` over classes present), micro and macro F1 and the exact-
match ratio (images whose whole label set is right) at the thresholds. The thresholds are chosen on validation: each
class's the one maximising its F1 (`--threshold T` fixes one for all); they travel in the DataSpec of the checkpoint
and every export, so predict, eval and serve apply them.

A calibrated model (one temperature per class, engine/calibration.py) divides each class's logit by its temperature
before the sigmoid, here as in predict. Its thresholds are chosen on those calibrated probabilities, after the
temperatures were fitted (and `--threshold T` applies to them), so a threshold is always compared with the
probability that is reported. Dividing by T_c > 0 keeps each class's order of images, so the F1-best threshold takes
the same images on validation either way and mAP does not change; only the numbers move (0.5 stays 0.5, the logit 0).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.device import autocast
from ..data import DataSpec, model_logits, normalize
from .calibration import Temperature, scale
from .distributed import all_gather_rows, broadcast_module

DEFAULT_THRESHOLD = 0.5


def smooth(targets: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing of multi-hot targets: each class's 0/1 pulled towards 1/2 by eps (1 -> 1 - eps/2, 0 -> eps/2),
    the binary form of cross-entropy's smoothing towards the uniform distribution."""
    return targets * (1 - eps) + eps / 2 if eps else targets


class MultiHotBCE(nn.Module):
    """BCEWithLogits against multi-hot (B, K) targets (mixed by mixup/cutmix or not), smoothed by --label-smoothing."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, smooth(targets.to(logits.dtype), self.smoothing))


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al. 2021) for many negatives per image: positives weighted by (1 - p)^gamma_pos,
    negatives by p_m^gamma_neg with their probability shifted down by `clip` (p_m = max(p - clip, 0)), so easy
    negatives, the bulk of a multi-label batch, add almost nothing. Mean over images of the sum over classes."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                 smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.smoothing = gamma_neg, gamma_pos, clip, smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = smooth(targets.float(), self.smoothing)
        p = torch.sigmoid(logits.float())
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        pos = y * torch.log(p.clamp(min=1e-8)) * (1 - p).pow(self.gamma_pos)
        neg = (1 - y) * torch.log((1 - p_neg).clamp(min=1e-8)) * p_neg.pow(self.gamma_neg)
        return -(pos + neg).sum(1).mean()


def plain_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of (B, K) logits against (B, K) targets, fp32 and detached: what validation reports
    as val_loss for a multi-label model (the counterpart of step.plain_cross_entropy)."""
    return F.binary_cross_entropy_with_logits(logits.detach().float(), y.float())


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(K,) average precision of each class, scikit-learn's definition: sum over the positives' ranks of
    (recall step) x precision, ties in score taken together; NaN for a class with no positive. scores, targets
    (N, K)."""
    n, k = scores.shape
    order = scores.argsort(dim=0, descending=True)
    s = scores.gather(0, order).double()
    t = targets.gather(0, order).double()
    tp = t.cumsum(0)
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)[:, None].expand(n, k)
    # a threshold sits only at the last of a run of equal scores (sklearn's distinct thresholds)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    precision = tp / rank
    positives = t.sum(0)
    ap = torch.full((k,), float("nan"), dtype=torch.float64, device=scores.device)
    for c in range(k):  # each class: recall steps between consecutive distinct thresholds x precision there
        keep = last[:, c]
        tpc = tp[keep, c]
        steps = torch.diff(tpc, prepend=tpc.new_zeros(1))
        if positives[c] > 0:
            ap[c] = (steps * precision[keep, c]).sum() / positives[c]
    return ap


def best_thresholds(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(K,) for each class the probability threshold with the highest F1 on (scores, targets) (N, K): the midpoint
    between the lowest score taken and the next one below it; 0.5 for a class with no positive."""
    n, k = scores.shape
    order = scores.argsort(dim=0, descending=True)
    s = scores.gather(0, order).double()
    t = targets.gather(0, order).double()
    tp = t.cumsum(0)
    taken = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)[:, None]
    f1 = 2 * tp / (taken + t.sum(0))
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    f1 = torch.where(last, f1, torch.full_like(f1, -1.0))
    i = f1.argmax(0)
    cols = torch.arange(k, device=scores.device)
    below = torch.where(i + 1 < n, s[(i + 1).clamp(max=n - 1), cols], torch.zeros_like(s[0]))
    th = (s[i, cols] + below) / 2
    return torch.where(t.sum(0) > 0, th, torch.full_like(th, DEFAULT_THRESHOLD)).float()


def multilabel_metrics(scores: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor) -> dict:
    """mAP, micro/macro F1, exact match and per-class figures of probabilities `scores` (N, K) against multi-hot
    `targets` (N, K) at per-class `thresholds` (K,). Classes with no positive are left out of mAP and macro F1 (as
    single-label macro F1 leaves absent classes out: engine/metrics.py)."""
    targets = (targets > 0.5)
    pred = scores >= thresholds.to(scores.device)[None, :]
    tp = (pred & targets).sum(0).double()
    fp = (pred & ~targets).sum(0).double()
    fn = (~pred & targets).sum(0).double()
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.zeros_like(tp))
    ap = average_precision(scores, targets)
    present = targets.sum(0) > 0
    micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp(min=1)
    mean = lambda v: float(v[present].mean()) if present.any() else 0.0  # noqa: E731
    return {
        "n": len(scores), "map": mean(ap), "micro_f1": float(micro), "macro_f1": mean(f1),
        "exact_match": float((pred == targets).all(1).double().mean()) if len(scores) else 0.0,
        "thresholds": [round(float(t), 6) for t in thresholds],
        "per_class": {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
                      "ap": [float(a) if a == a else None for a in ap.tolist()],
                      "support": [int(s) for s in targets.sum(0).tolist()]},
        "absent": [i for i, p in enumerate(present.tolist()) if not p],
    }


def precision_recall_points(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One class's precision-recall curve from its scores (N,) and 0/1 targets (N,), scikit-learn's
    `precision_recall_curve` points: (precision, recall) at every distinct score taken as the threshold, recall
    decreasing, then the end point (precision 1, recall 0). Float64 tensors; a class with no positive has none
    (empty tensors): its recall is undefined."""
    positives = float((targets > 0.5).sum())
    if positives == 0 or len(scores) == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, empty
    order = scores.double().argsort(descending=True)
    s, t = scores.double()[order], (targets[order] > 0.5).double()
    tp, taken = t.cumsum(0), torch.arange(1, len(s) + 1, dtype=torch.float64)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # a threshold takes every image of its score at once
    precision, recall = (tp / taken)[last], (tp / positives)[last]
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    return torch.cat([precision.flip(0), one]), torch.cat([recall.flip(0), zero])


class LabelMistakes:
    """The k images whose scores are furthest from their labels (the sum over classes of |target - probability|),
    largest first, for a multi-label model's mistakes.png: missed labels (present, scored under their threshold) and
    spurious ones (absent, scored over it) are read at the thresholds when drawn, which are known only once the
    whole split is scored. `update` takes one batch at a time, so only k images are kept: items are
    (error, (H, W, C) uint8 image on the CPU, (K,) probabilities, (K,) 0/1 targets) as numpy arrays."""

    def __init__(self, k: int = 16) -> None:
        self.k = k
        self.items: list[tuple] = []

    def update(self, x: torch.Tensor, probs: torch.Tensor, y: torch.Tensor) -> None:
        """x (B, C, H, W) uint8 as loaded, probs (B, K) sigmoid, y (B, K) multi-hot."""
        error = (y.float().to(probs.device) - probs.float()).abs().sum(1)
        top = error.argsort(descending=True)[: self.k]
        imgs = x[top.to(x.device)].permute(0, 2, 3, 1).cpu().numpy()
        self.items += [(float(error[i]), img, probs[i].float().cpu().numpy(), y[i].float().cpu().numpy())
                       for i, img in zip(top.tolist(), imgs)]
        self.items = sorted(self.items, key=lambda t: -t[0])[: self.k]


def wrong_labels(probs, targets, thresholds) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(missed, spurious) of one image: the classes it has that score under their threshold, and those it lacks
    that score at or over it, each as (class, probability), the furthest from its threshold first."""
    missed = [(c, float(p)) for c, (p, t, th) in enumerate(zip(probs, targets, thresholds)) if t > 0.5 and p < th]
    spurious = [(c, float(p)) for c, (p, t, th) in enumerate(zip(probs, targets, thresholds)) if t <= 0.5 and p >= th]
    return (sorted(missed, key=lambda m: m[1] - thresholds[m[0]]),
            sorted(spurious, key=lambda m: thresholds[m[0]] - m[1]))


@torch.no_grad()
def predict_scores(model: nn.Module, loader, spec: DataSpec, device: torch.device, amp: bool = False,
                   mistakes: LabelMistakes | None = None,
                   temperature: Temperature | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, K), multi-hot targets (N, K)) of a loader's images, on the CPU, not divided by the temperature;
    `mistakes` is shown every batch, with the probabilities of the logits divided by `temperature` (per class)."""
    model.eval()
    scores, targets = [], []
    for raw, y in loader:
        raw = raw.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model_logits(model, normalize(raw, spec), spec)
        if mistakes is not None:
            mistakes.update(raw, scale(logits.float(), temperature).sigmoid(), y)
        scores.append(logits.float().cpu())
        targets.append(y.float().cpu())
    k = spec.num_classes
    logits = torch.cat(scores) if scores else torch.zeros(0, k)
    return logits, torch.cat(targets) if targets else torch.zeros(0, k)


def summarize(logits: torch.Tensor, targets: torch.Tensor, spec: DataSpec, threshold: float | None = None,
              tune: bool = True, temperature: Temperature | None = None) -> dict:
    """The multi-label summary of logits (N, K) against multi-hot targets (N, K): see `evaluate_multilabel`."""
    scores = scale(logits.float(), temperature).sigmoid()
    if threshold is not None:
        th = torch.full((spec.num_classes,), float(threshold))
    elif tune and len(scores):
        th = best_thresholds(scores, targets)
    else:
        th = torch.tensor(spec.thresholds or [DEFAULT_THRESHOLD] * spec.num_classes, dtype=torch.float32)
    out = multilabel_metrics(scores, targets, th)
    out["loss"] = float(plain_bce(logits, targets)) if len(scores) else 0.0
    if temperature is not None:  # beside the loss as trained (results.csv's val_loss): that of the calibrated logits
        out["calibrated_loss"] = float(plain_bce(scale(logits.float(), temperature), targets)) if len(scores) else 0.0
    out["top1"], out["top5"] = out["exact_match"], None
    return out


def evaluate_multilabel(model: nn.Module, loader, spec: DataSpec, device: torch.device,
                        threshold: float | None = None, tune: bool = True, amp: bool = False,
                        mistakes: LabelMistakes | None = None, keep: dict | None = None, gather: bool = False,
                        temperature: Temperature | None = None) -> dict:
    """The multi-label summary of a split: loss (plain BCE), mAP, F1s, exact match, at thresholds chosen on this
    split (`tune`: each class's best F1), fixed (`threshold`), or the spec's own (tune False: a model's saved
    thresholds applied to new data). 'top1' is the exact-match ratio, the multi-label form of "the answer is right".
    `mistakes` collects the images furthest from their labels; `keep` receives "probs" and "targets" (N, K) for the
    pictures (precision-recall curves). `gather`: the loader is this torchrun rank's shard (a run's validation
    split), so every rank's scores are gathered first and each rank summarises the whole split (the same thresholds
    and mAP everywhere); `mistakes` then sees this rank's shard only. `temperature` (a calibrated model's, one per
    class): every probability (thresholds, mistakes, `keep`) is the sigmoid of the divided logits, and the summary
    adds `calibrated_loss` (the BCE of the divided logits) to `loss` (of the logits as trained); `keep` also gets
    the undivided (N, K) "logits" tensor."""
    broadcast_module(model, buffers_only=True)
    logits, targets = predict_scores(model, loader, spec, device, amp, mistakes, temperature)
    if gather:
        logits, targets = all_gather_rows(logits, device), all_gather_rows(targets, device)
    if keep is not None:
        keep["probs"], keep["targets"] = scale(logits, temperature).sigmoid().numpy(), targets.numpy()
        keep["logits"] = logits
    return summarize(logits, targets, spec, threshold, tune, temperature)
