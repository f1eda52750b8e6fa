"""What one training step computes, and what an epoch feeds it.

A step is a callable `step(x, y) -> (loss, cross-entropy)`: the forward pass under autocast, the loss (0-d: the
training objective, --loss with its label smoothing and class weights) and the backward pass of loss / --accumulate
(times fp16's loss scale), leaving the batch's gradients in each parameter's .grad for the trainer's optimizer_step.
The second value is the batch's plain cross-entropy, computed from the same logits in fp32: the measure validation
reports (val_loss), so results.csv's train_loss and val_loss are one quantity whatever --loss trains on. Set-up
chooses the kind once (engine/setup.py): `EagerStep` here, or cuda_graph.GraphedStep, which replays the same
arithmetic from a CUDA graph.

A `Feed` is one epoch's input to the loop: batches ready for its step. The image path's (engine/trainer.py) are
the loader's images augmented on the device; the cached-feature path's (engine/features.py) are the backbone's
features for the head. `train_one_epoch` runs either, so there is one training loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.device import autocast


def plain_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, K) logits against (B,) classes or (B, K) soft targets (mixup/cutmix): no label
    smoothing, no class weights; fp32, detached (a measurement, not part of the gradient)."""
    logits = logits.detach().float()
    return F.cross_entropy(logits, y.float() if y.is_floating_point() else y)


class EagerStep:
    """criterion(module(x), y) under autocast, then backward of loss / accumulate (scaled: GradScaler.scale);
    returns (loss, plain cross-entropy of the same logits)."""

    def __init__(self, module: nn.Module, criterion: nn.Module, device: torch.device, amp: str,
                 scale: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss, accumulate: int = 1,
                 measure: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = plain_cross_entropy) -> None:
        self.module, self.criterion, self.device, self.amp = module, criterion, device, amp
        self.scale, self.accumulate = scale, accumulate
        self.measure = measure  # validation's measure of the same logits (multi-label: plain binary cross-entropy)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp):
            logits = self.module(x)
            loss = self.criterion(logits, y)
        self.scale(loss / self.accumulate).backward()  # gradients summed over `accumulate` batches: their mean loss
        return loss, self.measure(logits, y)


@dataclass
class Feed:
    """One epoch of training input: `batches` yields (x, y) on the device, as `step` takes them, `count` of them.

    x: (B, C, H, W) normalised float images, or (B, D) cached features; y: (B,) classes or (B, K) soft targets.
    `shown`: the (images, labels) the callbacks see after each step instead of (x, y) (the features' path shows
    the images its first view came from); `label`: the progress bar's.
    """

    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    count: int
    step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    label: str
    shown: tuple[torch.Tensor, torch.Tensor] | None = None
