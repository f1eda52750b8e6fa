"""The eager step (engine/step.py): the loss, the gradients of loss / --accumulate in .grad, and the batch's plain
cross-entropy beside the training objective."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tudui.engine.optim import OneHotRegression
from tudui.engine.step import EagerStep


def test_the_eager_step_leaves_the_gradient_of_the_loss_over_accumulate():
    torch.manual_seed(0)
    model, crit = nn.Linear(4, 3), nn.CrossEntropyLoss()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss, _ = EagerStep(model, crit, torch.device("cpu"), "off", accumulate=2)(x, y)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (crit(model(x), y) / 2).backward()
    assert torch.allclose(loss, crit(model(x), y))  # the batch's own loss, not divided
    assert all(torch.allclose(g, p.grad) for g, p in zip(got, model.parameters()))


@pytest.mark.parametrize("crit", [nn.CrossEntropyLoss(label_smoothing=0.1), OneHotRegression(F.mse_loss),
                                  nn.CrossEntropyLoss(weight=torch.tensor([5.0, 1.0, 0.2]))],
                         ids=["label-smoothing", "mse", "class-weights"])
@pytest.mark.parametrize("soft", [False, True], ids=["classes", "soft-targets"])
def test_the_step_also_returns_the_plain_cross_entropy_of_its_logits(crit, soft):
    """Whatever the objective, the second value is torch's unweighted, unsmoothed cross-entropy of the same logits
    (the measure validation reports), and the gradients are still the objective's."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(8, 4)
    y = torch.randint(0, 3, (8,))
    if soft:  # mixup's soft targets
        y = 0.7 * F.one_hot(y, 3).float() + 0.3 * F.one_hot(y.roll(1), 3).float()
    loss, ce = EagerStep(model, crit, torch.device("cpu"), "off")(x, y)
    logits = model(x)
    assert torch.allclose(ce, F.cross_entropy(logits, y))
    assert torch.allclose(loss, crit(logits, y))
    assert not torch.allclose(ce, loss)  # two quantities: the test would not tell them apart otherwise
    assert not ce.requires_grad
