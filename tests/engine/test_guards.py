"""A loss that becomes NaN/inf stops training with the step and learning rate, keeping the last good checkpoint."""
from __future__ import annotations

import pytest
import torch

from tudui.core.config import TrainConfig
from tudui.core.checkpoint import load_checkpoint
from tudui.engine.guards import NonFiniteLoss
from tudui.engine.trainer import fit


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(data=["digits"], model="mnist-cnn", epochs=2, batch_size=64, subset=300, device="cpu",
                      optimizer="sgd", lr=1e12, scheduler="none", loss="nll", project=str(tmp_path), name="nan")
    with pytest.raises(NonFiniteLoss, match=r"at step \d+ \(epoch 1, learning rate 1e\+12\)"):
        fit(cfg)
    last = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert last["epoch"] == 0  # the state from before the first step, never the diverged weights
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_a_nonfinite_objective_stops_at_its_own_step(tmp_path, monkeypatch):
    """The guard sees the batch's cross-entropy, but where the objective itself is not finite (its logits still
    are) it sees the objective: the run stops at that step, not a step later when NaN weights reach the logits."""
    import torch.nn as nn

    from tudui.engine import setup

    class NanAtThirdStep(nn.Module):
        calls = 0

        def forward(self, logits, y):
            NanAtThirdStep.calls += 1
            loss = nn.functional.cross_entropy(logits, y)
            return loss * float("nan") if NanAtThirdStep.calls == 3 else loss

    monkeypatch.setattr(setup, "create_loss", lambda cfg, counts, device, multi_label=False: NanAtThirdStep())
    cfg = TrainConfig(data=["digits"], model="mnist-cnn", epochs=1, batch_size=64, subset=640, device="cpu",
                      project=str(tmp_path), name="nan3", plots=False, tensorboard=False)
    with pytest.raises(NonFiniteLoss, match=r"non-finite \(nan\) at step 3 "):
        fit(cfg)
