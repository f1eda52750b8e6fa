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
