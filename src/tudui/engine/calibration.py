"""Calibrated probabilities: one temperature T fitted on the validation split (temperature scaling, Guo et al. 2017).

The logits are divided by T before the softmax: T > 1 softens over-confident probabilities, T < 1 sharpens
under-confident ones (label smoothing), and the top class never changes, so accuracy does not either. T minimises the
validation negative log-likelihood; it is fitted by L-BFGS on log T (T stays positive, and the NLL is smooth in it).
A training run fits it at the end (`--calibrate on`), `tudui calibrate` fits it for an older checkpoint; it is stored
as the checkpoint's `temperature` and in every export's metadata, and whatever predicts divides by it.

The expected calibration error (ECE) is the gap between confidence and accuracy, averaged over ECE_BINS equal-width
bins of the top probability, each weighted by its share of the images.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import DataSpec, model_logits, normalize
from .rejection import tables

ECE_BINS = 15


class TemperatureScaled(nn.Module):
    """A model whose logits are divided by `temperature` (what evaluation runs when a checkpoint carries one)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


@torch.no_grad()
def collect_logits(model: nn.Module, loader, spec: DataSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, K) float32 logits, (N,) int64 targets) of a loader's images, on the CPU (flip TTA as the spec says)."""
    model.eval()
    logits, targets = [], []
    for raw, y in loader:
        logits.append(model_logits(model, normalize(raw.to(device), spec), spec).float().cpu())
        targets.append(y.cpu())
    if not logits:
        return torch.zeros(0, spec.num_classes), torch.zeros(0, dtype=torch.int64)
    return torch.cat(logits), torch.cat(targets).long()


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / temperature)."""
    return float(F.cross_entropy(logits.double() / temperature, targets))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> float:
    """The T > 0 minimising nll(logits, targets, T): L-BFGS on log T from T = 1 (float64)."""
    if len(targets) == 0:
        return 1.0
    z, y = logits.detach().double(), targets.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and t > 0 else 1.0


def reliability(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Per bin of the top probability ((i/bins, (i+1)/bins], the first bin also holding 0): images, mean confidence,
    accuracy (NaN for an empty bin)."""
    conf, pred = probs.max(1)
    correct = (pred == targets).double()
    idx = (conf.double() * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(idx, minlength=bins).double()
    conf_sum = torch.bincount(idx, conf.double(), minlength=bins)
    acc_sum = torch.bincount(idx, correct, minlength=bins)
    safe = count.clamp(min=1)
    nan = torch.full_like(count, math.nan)
    return {"count": count.long().tolist(), "confidence": torch.where(count > 0, conf_sum / safe, nan).tolist(),
            "accuracy": torch.where(count > 0, acc_sum / safe, nan).tolist()}


def ece(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of (images in the bin / all) * |accuracy - mean confidence|."""
    r = reliability(probs, targets, bins)
    n = max(1, len(targets))
    return float(sum(c / n * abs(a - p) for c, a, p in zip(r["count"], r["accuracy"], r["confidence"]) if c))


def calibration_report(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> dict:
    """ECE and NLL before and after dividing by `temperature`, with both reliability tables."""
    before, after = logits.float().softmax(1), (logits.float() / temperature).softmax(1)
    return {"n": len(targets), "ece_before": ece(before, targets), "ece_after": ece(after, targets),
            "nll_before": nll(logits, targets), "nll_after": nll(logits, targets, temperature),
            "reliability_before": reliability(before, targets), "reliability_after": reliability(after, targets)}


def calibrate(model: nn.Module, val_loader, spec: DataSpec, device: torch.device, test_loader=None) -> dict:
    """Fit the temperature on `val_loader`'s images; {"temperature", "val": report, "test": report or None,
    "rejection": the scores' quantile tables (engine/rejection.py)}."""
    logits, targets = collect_logits(model, val_loader, spec, device)
    t = fit_temperature(logits, targets)
    out = {"temperature": t, "bins": ECE_BINS, "val": calibration_report(logits, targets, t), "test": None,
           "rejection": tables(logits, t)}  # each score's validation quantiles, for --reject auto
    if test_loader is not None:
        out["test"] = calibration_report(*collect_logits(model, test_loader, spec, device), t)
    return out
