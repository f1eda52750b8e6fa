"""The eager step (engine/step.py): the loss, and the gradients of loss / --accumulate in .grad."""
from __future__ import annotations

import torch
import torch.nn as nn

from tudui.engine.step import EagerStep


def test_the_eager_step_leaves_the_gradient_of_the_loss_over_accumulate():
    torch.manual_seed(0)
    model, crit = nn.Linear(4, 3), nn.CrossEntropyLoss()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss = EagerStep(model, crit, torch.device("cpu"), "off", accumulate=2)(x, y)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (crit(model(x), y) / 2).backward()
    assert torch.allclose(loss, crit(model(x), y))  # the batch's own loss, not divided
    assert all(torch.allclose(g, p.grad) for g, p in zip(got, model.parameters()))
