"""Learning-rate range test (`tudui lr-find`, `tudui train --lr auto`).

The rate grows exponentially from `start` to `end` over `steps` optimisation steps on the run's own data and
model; the loss is smoothed with an exponential moving average (debiased, beta 0.9: over a 100-step sweep
fastai's 0.98 trails the raw loss by ~50 steps, half the sweep) and the test stops early
once it diverges (4x the lowest smoothed loss, or not finite).

The suggestion is a one-cycle *peak*, because that is how tudui uses a rate (`--scheduler onecycle`: a short
warm-up to the peak, then a cosine decay). The points of the smoothed curve that fastai reads are the anchors:
"steep" (the rate where the loss falls fastest, before its minimum) and "valley" (fastai's default: two thirds of
the way down the longest stretch over which the loss keeps falling) mark a rate that is safe for a constant
schedule; a one-cycle peak sits several times higher, since the warm-up and the decay around it tolerate rates
close to divergence, but no higher than about a tenth of the rate at the loss minimum (Smith's range test; fastai's
"minimum/10"). So the suggestion is PEAK_FACTOR x the larger of steep and valley, capped at a tenth of the rate at
the minimum (never below the steep/valley point itself). Read a plain "steep" rate as a one-cycle peak and the
run trains at a fraction of what it could: 0.000756 against the default's 0.003 cost Fashion-MNIST 1-3 points.
A range test is noisy (one short sweep, one seed), so where the default rate already lies in the band the rule
accepts ([steep/valley, minimum/10]) or within a factor of 2 of the suggestion, the finding says to keep the
default (`keep_default`), and `--lr auto` keeps it. The model's weights and buffers are restored afterwards and a
fresh optimiser is used, so the run that follows starts exactly as it would have.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from ..core.device import autocast

PEAK_FACTOR = 4.0  # a one-cycle peak over the steep/valley point of the range test
CEILING = 10.0  # ... and at most the rate at the smoothed loss's minimum over this
CLOSE = 2.0  # a suggestion within this factor of the default rate is no reason to leave the default
RULE = (f"one-cycle peak: {PEAK_FACTOR:g}x the steep/valley point of the smoothed loss, capped at 1/{CEILING:g} of the "
        "rate at its minimum but never below that point")


@dataclass
class LRFinding:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed
    raw: list[float] = field(default_factory=list)
    suggestion: float = float("nan")
    rule: str = RULE
    steep: float = float("nan")  # where the smoothed loss falls fastest (before its minimum)
    valley: float = float("nan")  # fastai's valley point
    minimum: float = float("nan")  # the rate at the smoothed loss's minimum
    default: float | None = None  # the rate the run would use without the test (None: no default to compare with)

    @property
    def band(self) -> tuple[float, float]:
        """The rates the rule accepts as a one-cycle peak: from the steep/valley point to minimum/CEILING."""
        lo = max(self.steep, self.valley)
        return lo, max(lo, self.minimum / CEILING)

    @property
    def keep_default(self) -> bool:
        """True where the default rate is already as good a choice as the suggestion: inside the band, or within a
        factor CLOSE of the suggestion (closer than one range test can tell apart)."""
        if self.default is None or not math.isfinite(self.suggestion):
            return False
        lo, hi = self.band
        return lo <= self.default <= hi or 1 / CLOSE <= self.default / self.suggestion <= CLOSE

    @property
    def chosen(self) -> float:
        """The rate to train with: the default where `keep_default`, else the suggestion."""
        return float(self.default) if self.keep_default else self.suggestion


def steep(lrs: list[float], losses: list[float], skip_start: int = 5, skip_end: int = 3) -> float:
    """fastai's "steep": the steepest-descent rate of a smoothed loss curve (before its minimum)."""
    end = min(len(losses), int(min(range(len(losses)), key=losses.__getitem__)) + 1)
    lo = min(skip_start, max(0, end - 3))
    xs, ys = [math.log10(v) for v in lrs[lo:end]], losses[lo:end]
    if len(xs) < 3:
        return lrs[max(0, end - 1)] / 10
    slopes = [(ys[i + 1] - ys[i - 1]) / (xs[i + 1] - xs[i - 1]) for i in range(1, len(xs) - 1)]
    best = min(range(len(slopes)), key=slopes.__getitem__)
    return float(lrs[lo + 1 + best])


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's "valley": the longest stretch over which the loss keeps falling (a longest decreasing subsequence),
    and the rate two thirds of the way down it (its one-third plus half a third)."""
    n = len(losses)
    run = [1] * n  # run[i]: the longest decreasing subsequence ending at i
    first, last = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[last]:
            last = i
            first = last - run[last]
    third = (last - first) / 3
    return float(lrs[max(0, min(n - 1, first + int(third) + int(third / 2)))])


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The one-cycle peak for a smoothed loss curve (see the module's docstring)."""
    return _suggest(lrs, losses)[0]


def _suggest(lrs: list[float], losses: list[float]) -> tuple[float, float, float, float]:
    """(suggestion, steep, valley, rate at the minimum)."""
    s, v = steep(lrs, losses), valley(lrs, losses)
    at_min = float(lrs[min(range(len(losses)), key=losses.__getitem__)])
    lo = max(s, v)
    return max(lo, min(PEAK_FACTOR * lo, at_min / CEILING)), s, v, at_min


def lr_range_test(model: nn.Module, loader, prepare: Callable, criterion: nn.Module,
                  make_optimizer: Callable[[], torch.optim.Optimizer], device: torch.device, amp: bool = False,
                  start: float = 1e-7, end: float = 10.0, steps: int = 100, beta: float = 0.9,
                  diverge: float = 4.0, default: float | None = None) -> LRFinding:
    """Run the test on `model` (restored afterwards); `prepare(x, y) -> (x, y)` readies a batch for training.
    `default`: the rate the run would use without the test, to say whether it is already the better choice."""
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    optimizer = make_optimizer()
    gamma = (end / start) ** (1 / max(1, steps - 1))
    found, avg, best = LRFinding(default=default), 0.0, float("inf")
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
    if finite:
        found.suggestion, found.steep, found.valley, found.minimum = _suggest([a for a, _ in finite],
                                                                              [b for _, b in finite])
    else:
        found.suggestion = start
    return found
