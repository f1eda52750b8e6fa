"""`--cuda-graph`: a training batch's forward pass, loss and backward pass replayed as one CUDA graph.

Why: a step of a small net on a GPU is bound by launching kernels, not by arithmetic. `fast-res` at batch 512 on an
H200 took 6-8 ms a step, the same as at batch 128, while its arithmetic is ~1% of what the card does in that time:
the step is a few hundred kernels, each launched from Python (benchmarks/README.md, "On one GPU"). A CUDA graph
records those launches once and replays them with one call. torch.compile(mode="reduce-overhead") does the same
after compiling, which costs more seconds than a Fashion-MNIST run takes; this captures the eager kernels as they are.

What is captured: the copy target for the batch (static input tensors), forward under autocast, the loss and the
backward pass (of the loss times fp16's loss scale, a tensor the graph reads at each replay), which writes every
trainable parameter's gradient into memory the graph owns. The optimiser, the schedule, the EMA and the augmentation
stay eager (a handful of launches: AdamW is fused), so the learning rate, clipping and every callback behave as
without a graph. Capture follows torch's recipe: a few warm-up passes on a
side stream (cuDNN and cuBLAS pick their algorithms and workspaces there), BatchNorm's statistics put back as they
were before them (the warm-ups repeat one batch), then one recorded pass. A batch of another shape or dtype, or a
change in which parameters train (--fine-tune unfreezing the backbone) or in train/eval modes, records a new graph.

What cannot be captured falls back to the eager step (engine/step.py) with a warning (a forward pass that reads a value back to the
host, or does CPU work): a replay runs only the recorded kernels, so Python code inside forward() runs at capture
time only. That is why `--cuda-graph auto` uses graphs for tudui's registered models alone; `on` also captures a
model of your own (check that its forward does only tensor work on the GPU), `off` never.
"""
from __future__ import annotations

import sys

import torch
import torch.nn as nn

from ..core.device import autocast
from .step import EagerStep, plain_cross_entropy

WARMUP = 3  # eager passes on the side stream before capture (torch's examples use 3; cuDNN's autotuning is done)


def unsupported(cfg, device: torch.device, ddp: bool) -> str | None:
    """Why this run cannot use a graph (None when it can); the reason ends up in the run's first line."""
    if device.type != "cuda":
        return f"the device is {device.type}, not CUDA"
    if cfg.compile:
        return "--compile: compiled kernels are not recorded here"
    if cfg.accumulate != 1:
        return "--accumulate sums gradients over batches; a graph overwrites them"
    if ddp:
        return "torchrun: DDP's gradient hooks are not recorded here"
    return None


class GraphedStep:
    """`step(x, y)` = criterion(model(x), y) and its backward pass, replayed from a CUDA graph; returns the loss and
    the batch's plain cross-entropy (as step.EagerStep does).

    x: (B, C, H, W) float, prepared as the eager step would get it; y: (B,) classes or (B, K) soft targets.
    After a call every trainable parameter's .grad holds this batch's gradient (not a sum over calls).
    A model whose step cannot be recorded is stepped eagerly from then on (`failed` says why).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, device: torch.device, amp: str,
                 scale=lambda loss: loss) -> None:
        self.model, self.criterion, self.device, self.amp = model, criterion, device, amp
        self.scale = scale  # GradScaler.scale with fp16: multiplies by the scale tensor, read afresh at each replay
        self.key = None  # what the current graph was recorded for
        self.graph = self.x = self.y = self.loss = self.ce = None
        self.params: list[nn.Parameter] = []
        self.grads: list[torch.Tensor] = []
        self.failed: str | None = None  # why capture failed: every step is then `eager`'s
        self.eager = EagerStep(model, criterion, device, amp, scale)  # --cuda-graph needs --accumulate 1

    def _key(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        return (x.shape, x.stride(), x.dtype, y.shape, y.dtype, tuple(p.requires_grad for p in self.model.parameters()),
                tuple(m.training for m in self.model.modules()))

    def _forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp, cache=False):  # a cached cast would be made once, outside the graph
            logits = self.model(self.x)
            loss = self.criterion(logits, self.y)
        return loss, plain_cross_entropy(logits, self.y)

    def _capture(self, x: torch.Tensor, y: torch.Tensor, key: tuple) -> None:
        self.graph = None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.x, self.y = x.detach().clone(), y.detach().clone()  # clone keeps channels-last strides
        buffers = list(self.model.buffers())
        saved = [b.detach().clone() for b in buffers]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                for p in self.params:
                    p.grad = None
                self.scale(self._forward()[0]).backward()
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.no_grad():
            for b, v in zip(buffers, saved):  # the warm-ups' BatchNorm updates undone
                b.copy_(v)
        for p in self.params:
            p.grad = None  # so the recorded backward pass allocates (not adds to) every gradient
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.loss, self.ce = self._forward()
            self.scale(self.loss).backward()
        self.grads = [p.grad for p in self.params]
        self.graph, self.key = graph, key

    def _give_up(self, e: Exception) -> None:
        self.failed = str(e).splitlines()[0] if str(e) else type(e).__name__
        for p in self.model.parameters():
            p.grad = None
        self.graph = self.x = self.y = self.loss = self.ce = None
        self.grads = []
        print(f"warning: --cuda-graph: this model's training step cannot be recorded as a CUDA graph ({self.failed}); "
              "training on without one (its forward pass may read values back to the host)", file=sys.stderr,
              flush=True)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss and cross-entropy (0-d each), from a replay, or from the eager step once no graph can be
        recorded."""
        if self.failed is not None:
            return self.eager(x, y)
        key = self._key(x, y)
        if key != self.key:
            try:
                self._capture(x, y, key)
            except RuntimeError as e:  # e.g. "operation not permitted when stream is capturing" (a host sync)
                self._give_up(e)
                return self.eager(x, y)
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        for p, g in zip(self.params, self.grads):  # zero_grad(set_to_none=True) elsewhere only drops the names
            p.grad = g
        return self.loss.detach().clone(), self.ce.clone()  # the graph's outputs are overwritten by the next replay
