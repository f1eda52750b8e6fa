"""Classification metrics from counts, so they add up exactly across batches and ranks.

`batch_counts` turns one batch into counts; summing counts (or all-reducing them
under torchrun) and then calling `compute_metrics` gives exact dataset-level numbers:
accuracy is correct/total over all samples, never an average of batch accuracies.
"""
from __future__ import annotations

import numpy as np
import torch


def batch_counts(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """logits (B, K) float, targets (B,) int64 -> counts on the same device."""
    k = min(5, num_classes)
    topk = logits.topk(k, dim=1).indices  # (B, k)
    hit = topk == targets[:, None]
    pred = topk[:, 0]
    confusion = torch.bincount(targets * num_classes + pred, minlength=num_classes * num_classes)
    return {
        "n": torch.tensor(len(targets), device=logits.device, dtype=torch.float64),
        "correct1": hit[:, 0].sum().to(torch.float64),
        "correct5": hit.any(dim=1).sum().to(torch.float64),
        "confusion": confusion.view(num_classes, num_classes).to(torch.float64),  # rows: true, cols: predicted
    }


def add_counts(total: dict[str, torch.Tensor] | None, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if total is None:
        return {k: v.clone() for k, v in part.items()}
    for k, v in part.items():
        total[k] += v
    return total


def per_class(confusion: torch.Tensor) -> dict[str, list[float]]:
    """Precision, recall, F1 and support per class from a (K, K) confusion matrix (rows = true class)."""
    cm = confusion.to(torch.float64)
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                     torch.zeros_like(tp))
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": [int(s) for s in support.tolist()]}


def compute_metrics(counts: dict[str, torch.Tensor]) -> dict:
    """Counts -> {'n', 'loss', 'top1', 'top5', 'confusion', 'per_class', 'macro_f1', 'balanced_accuracy', 'absent'}
    (accuracies in [0, 1]).

    macro_f1 averages the F1 of the classes present in the data (support > 0), as scikit-learn's
    `f1_score(average="macro", labels=present)`: a class with no image has no recall, and counting it as 0 would
    score a perfect prediction of a folder holding 3 of 10 classes 0.3. 'absent' lists those classes' indices.
    balanced_accuracy is the mean recall over the same present classes (scikit-learn's balanced_accuracy_score):
    on long-tailed data a model that ignores the rare classes keeps a high top-1, not a high balanced accuracy.
    """
    n = max(float(counts["n"]), 1.0)
    cm = counts["confusion"].cpu()
    pc = per_class(cm)
    present = [f for f, s in zip(pc["f1"], pc["support"]) if s > 0]
    recalls = [r for r, s in zip(pc["recall"], pc["support"]) if s > 0]
    out = {
        "n": int(counts["n"]),
        "top1": float(counts["correct1"]) / n,
        "top5": float(counts["correct5"]) / n,
        "confusion": cm.to(torch.int64).tolist(),
        "per_class": pc,
        "macro_f1": sum(present) / len(present) if present else 0.0,
        "balanced_accuracy": sum(recalls) / len(recalls) if recalls else 0.0,
        "absent": [i for i, s in enumerate(pc["support"]) if s == 0],
    }
    if "loss_sum" in counts:
        out["loss"] = float(counts["loss_sum"]) / n
    if "calibrated_loss_sum" in counts:  # the loss of the logits divided by a calibrated model's temperature
        out["calibrated_loss"] = float(counts["calibrated_loss_sum"]) / n
    return out


class TopMistakes:
    """The k most confidently wrong predictions seen so far, most confident first (for mistakes.png).

    `update` takes one batch at a time, so a split of any size is scanned in one pass while only k images are
    kept: items are (probability of the predicted class, (H, W, C) uint8 image on the CPU, true, predicted).
    """

    def __init__(self, k: int = 16) -> None:
        self.k = k
        self.items: list[tuple[float, np.ndarray, int, int]] = []

    def update(self, x: torch.Tensor, probs: torch.Tensor, y: torch.Tensor) -> None:
        """x (B, C, H, W) uint8 as loaded, probs (B, K) float softmax, y (B,) int64."""
        conf, pred = probs.max(dim=1)
        wrong = (pred != y).nonzero().flatten()
        if len(wrong) == 0:
            return
        top = wrong[conf[wrong].argsort(descending=True)[: self.k]]
        imgs = x[top].permute(0, 2, 3, 1).cpu().numpy()
        self.items += [(float(conf[i]), img, int(y[i]), int(pred[i])) for i, img in zip(top, imgs)]
        self.items = sorted(self.items, key=lambda t: -t[0])[: self.k]
