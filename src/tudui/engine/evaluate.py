"""Evaluation: one pass over a loader with no gradients, reduced to counts."""
from __future__ import annotations

import torch

from ..data import DataSpec, model_logits, normalize
from .device import autocast
from .metrics import add_counts, batch_counts, summarize


@torch.no_grad()
def evaluate_counts(model: torch.nn.Module, loader, spec: DataSpec, device: torch.device,
                    criterion: torch.nn.Module | None = None, amp: bool = False) -> dict[str, torch.Tensor]:
    """Sum of per-batch counts (see metrics.py) over `loader`; model is put in eval mode."""
    model.eval()
    total = None
    for x, y in loader:
        x = normalize(x.to(device, non_blocking=True), spec)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model_logits(model, x, spec)  # flip TTA when spec.tta
        logits = logits.float()
        counts = batch_counts(logits, y, spec.num_classes)
        if criterion is not None:
            counts["loss_sum"] = criterion(logits, y).to(torch.float64) * len(y)
        total = add_counts(total, counts)
    if total is None:
        raise ValueError("evaluation loader yielded no batches")
    return total


def evaluate(model, loader, spec, device, criterion=None, amp=False) -> dict:
    """Loss, top-1, top-5, confusion matrix and per-class precision/recall/F1 over `loader`."""
    return summarize(evaluate_counts(model, loader, spec, device, criterion, amp))


@torch.no_grad()
def iter_predictions(model: torch.nn.Module, loader, spec: DataSpec, device: torch.device, amp: bool = False):
    """Per-sample predictions, batch by batch, in loader order (for pictures of mistakes).

    Yields (x, probs, y): x (B, C, H, W) uint8 as loaded, probs (B, K) float32 softmax, y (B,) int64, all on `device`.
    A generator, so callers keep only what they need (a whole validation set of images may not fit in memory).
    """
    model.eval()
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model_logits(model, normalize(x, spec), spec)
        yield x, logits.float().softmax(dim=1), y.to(device, non_blocking=True)
