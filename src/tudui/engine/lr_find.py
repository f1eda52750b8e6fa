"""Learning-rate range test (`tudui lr-find`, `tudui train --lr auto`).

The rate grows exponentially from `start` to `end` over `steps` optimisation steps on the run's own data and
model; the loss is smoothed with an exponential moving average (debiased, beta 0.9: over a 100-step sweep
fastai's 0.98 trails the raw loss by ~50 steps, half the sweep) and the test stops early
once it diverges (4x the lowest smoothed loss, or not finite). The suggestion follows fastai's "steep" rule: the
rate where the smoothed loss falls fastest (the most negative slope against log10(lr)), taken before the
minimum. The model's weights and buffers are restored afterwards and a fresh optimiser is used, so the run
that follows starts exactly as it would have.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from ..core.device import autocast

RULE = "steepest descent of the smoothed loss (fastai's 'steep'), before its minimum"


@dataclass
class LRFinding:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed
    raw: list[float] = field(default_factory=list)
    suggestion: float = float("nan")
    rule: str = RULE


def suggest(lrs: list[float], losses: list[float], skip_start: int = 5, skip_end: int = 3) -> float:
    """The steepest-descent rate of a smoothed loss curve (before its minimum)."""
    end = min(len(losses), int(min(range(len(losses)), key=losses.__getitem__)) + 1)
    lo = min(skip_start, max(0, end - 3))
    xs, ys = [math.log10(v) for v in lrs[lo:end]], losses[lo:end]
    if len(xs) < 3:
        return lrs[max(0, end - 1)] / 10
    slopes = [(ys[i + 1] - ys[i - 1]) / (xs[i + 1] - xs[i - 1]) for i in range(1, len(xs) - 1)]
    best = min(range(len(slopes)), key=slopes.__getitem__)
    return float(lrs[lo + 1 + best])


def lr_range_test(model: nn.Module, loader, prepare: Callable, criterion: nn.Module,
                  make_optimizer: Callable[[], torch.optim.Optimizer], device: torch.device, amp: bool = False,
                  start: float = 1e-7, end: float = 10.0, steps: int = 100, beta: float = 0.9,
                  diverge: float = 4.0) -> LRFinding:
    """Run the test on `model` (restored afterwards); `prepare(x, y) -> (x, y)` readies a batch for training."""
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    optimizer = make_optimizer()
    gamma = (end / start) ** (1 / max(1, steps - 1))
    found, avg, best = LRFinding(), 0.0, float("inf")
    model.train()
    try:
        batches = iter(loader)
        for i in range(steps):
            try:
                x, y = next(batches)
            except StopIteration:  # a small dataset: go round again
                batches = iter(loader)
                x, y = next(batches)
            lr = start * gamma ** i
            for g in optimizer.param_groups:
                g["lr"] = lr
            x, y = prepare(x.to(device), y.to(device))
            with autocast(device, amp):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            avg = beta * avg + (1 - beta) * value
            smoothed = avg / (1 - beta ** (i + 1))
            found.lrs.append(lr)
            found.raw.append(value)
            found.losses.append(smoothed)
            if not math.isfinite(smoothed) or smoothed > diverge * best:
                break
            best = min(best, smoothed)
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    finite = [(lr, v) for lr, v in zip(found.lrs, found.losses) if math.isfinite(v)]
    found.suggestion = suggest([a for a, _ in finite], [b for _, b in finite]) if finite else start
    return found
