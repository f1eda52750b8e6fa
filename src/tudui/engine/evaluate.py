"""Evaluation: one pass over a loader with no gradients, reduced to counts, summed over torchrun ranks."""
from __future__ import annotations

import torch

from ..core.device import autocast
from ..data import DataSpec, model_logits, normalize
from .distributed import all_reduce_counts, broadcast_module
from .metrics import TopMistakes, add_counts, batch_counts, compute_metrics


@torch.no_grad()
def evaluate_counts(model: torch.nn.Module, loader, spec: DataSpec, device: torch.device,
                    criterion: torch.nn.Module | None = None, amp: bool = False,
                    mistakes: TopMistakes | None = None, temperature: float = 1.0,
                    kept: list | None = None) -> dict[str, torch.Tensor]:
    """Sum of per-batch counts (see metrics.py) over `loader`; model is put in eval mode.

    An empty loader (under torchrun, a rank with no share of a split smaller than the job) gives zero counts.
    `mistakes`, when given, is shown every batch in the same pass (the run's final evaluation draws mistakes.png
    from it instead of predicting the split a second time). `temperature` (a calibrated model's, engine/calibration):
    the mistakes' probabilities are the calibrated ones predict reports, and beside the loss (of the logits as
    trained, what results.csv's val_loss measures) the criterion of the divided logits is summed as well. `kept`,
    when given, gets each batch's ((B, K) float32 logits, (B,) targets) on the CPU, in order: what `tudui eval`'s
    risk-coverage curve and rejection report need, without a second pass over the split.
    """
    model.eval()
    k = spec.num_classes
    total = batch_counts(torch.zeros(0, k, device=device), torch.zeros(0, dtype=torch.int64, device=device), k)
    if criterion is not None:
        total["loss_sum"] = torch.zeros((), dtype=torch.float64, device=device)
        if temperature != 1.0:
            total["calibrated_loss_sum"] = torch.zeros((), dtype=torch.float64, device=device)
    for raw, y in loader:
        raw = raw.to(device, non_blocking=True)  # (B, C, H, W) uint8
        y = y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model_logits(model, normalize(raw, spec), spec)  # flip TTA when spec.tta
        logits = logits.float()
        if mistakes is not None:
            mistakes.update(raw, (logits / temperature).softmax(dim=1), y)
        if kept is not None:
            kept.append((logits.cpu(), y.cpu()))
        counts = batch_counts(logits, y, k)
        if criterion is not None:
            counts["loss_sum"] = criterion(logits, y).to(torch.float64) * len(y)
            if temperature != 1.0:
                counts["calibrated_loss_sum"] = criterion(logits / temperature, y).to(torch.float64) * len(y)
        total = add_counts(total, counts)
    return total


def kept_logits(kept: list, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A `kept` list of evaluate_counts, joined: ((N, K) float32 logits, (N,) int64 targets) on the CPU, as
    calibration.collect_logits gives them (empty tensors of those shapes when nothing was kept)."""
    if not kept:
        return torch.zeros(0, num_classes), torch.zeros(0, dtype=torch.int64)
    return torch.cat([b[0] for b in kept]), torch.cat([b[1] for b in kept]).long()


def evaluate(model: torch.nn.Module, loader, spec: DataSpec, device: torch.device,
             criterion: torch.nn.Module | None = None, amp: bool = False,
             mistakes: TopMistakes | None = None, temperature: float = 1.0, kept: list | None = None) -> dict:
    """Loss, top-1, top-5, confusion matrix and per-class precision/recall/F1 over the whole split.

    Under torchrun each rank's `loader` holds its own share (every sample on exactly one rank, no padding),
    the counts are summed over ranks, and every rank gets the same result; BatchNorm buffers are first made
    rank 0's (the ones saved). In one process the collectives are no-ops. `model` is the unwrapped module.
    """
    broadcast_module(model, buffers_only=True)
    return compute_metrics(all_reduce_counts(evaluate_counts(model, loader, spec, device, criterion, amp, mistakes,
                                                             temperature, kept)))
