"""An exponential moving average of the weights (`--ema`), validated and saved as the best model.

After every optimiser step: ema = d * ema + (1 - d) * weights, for every floating-point parameter and buffer
(BatchNorm statistics included), with the decay warming up as Ultralytics' ModelEMA does,
d = decay * (1 - exp(-updates / tau)): early on, when the weights move fast, the average follows them closely.
Integer buffers (BatchNorm's num_batches_tracked) are copied. The raw weights keep training and go to last.pt
together with this average, so `--resume` continues both exactly.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, tau: float = 500.0) -> None:
        self.module = copy.deepcopy(model).eval()  # same device and memory format as the model
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        floats, targets = [], []
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                floats.append(ema_v)
                targets.append(v.detach())
            else:
                ema_v.copy_(v)
        # ema + (1 - d) (v - ema) = d ema + (1 - d) v for every tensor in one call, not two operations per tensor:
        # on a GPU each is a kernel launch, and launches are what bound a small model's step there
        if floats:
            torch._foreach_lerp_(floats, targets, 1 - d)

    def state_dict(self) -> dict:
        return {"module": {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()},
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
