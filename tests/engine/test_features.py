"""Head training from cached backbone features (--freeze-backbone, --feature-views)."""
from __future__ import annotations

import csv

import pytest
import torch
import torch.nn as nn

import tudui
from tudui.engine import features
from tudui.engine.callbacks import Callback
from tudui.models import create_model
from tudui.models.surgery import head_path

# 256 real 8x8 digits, 4 steps of 64 per epoch; `fast` has BatchNorm in its backbone and one Linear head.
BASE = dict(data=["digits"], model="fast", batch_size=64, subset=256, plots=False, tensorboard=False, amp="off",
            freeze_backbone=True, lr=0.01, hflip=True, tta=True)


@pytest.fixture(scope="module")
def frozen(tmp_path_factory) -> dict:
    """BASE with --weights: a freshly initialised `fast` saved as a state_dict (a frozen backbone needs weights; what
    they hold does not matter to these tests)."""
    path = tmp_path_factory.mktemp("weights") / "fast.pth"
    torch.manual_seed(0)
    torch.save(create_model("fast", 10, 1, 8).state_dict(), path)
    return BASE | {"weights": str(path)}


class Snapshot(Callback):
    """The weights at the start, and how many times the backbone's first conv ran by the end of each epoch."""

    def __init__(self) -> None:
        self.calls, self.per_epoch, self.start = 0, [], None

    def on_fit_start(self, run) -> None:
        self.start = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        conv = next(m for m in run.model.modules() if isinstance(m, nn.Conv2d))
        conv.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def on_epoch_end(self, run, row, val) -> None:
        self.per_epoch.append(self.calls)


def _rows(run_dir) -> list[dict]:
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("balance", ["none", "sampler"])  # the sampler: the cached path takes the image path's draws
def test_without_augmentation_cached_features_train_the_head_as_the_image_path_does(frozen, tmp_path, monkeypatch,
                                                                                     balance):
    cached, plain = Snapshot(), Snapshot()
    a = tudui.train(**frozen, augment="none", epochs=3, balance=balance, project=str(tmp_path), name="cached",
                    callbacks=[cached])
    monkeypatch.setattr(features, "maybe_feature_trainer", lambda run: None)  # the image path, every epoch
    b = tudui.train(**frozen, augment="none", epochs=3, balance=balance, project=str(tmp_path), name="plain",
                    callbacks=[plain])
    ra, rb = _rows(a.run_dir), _rows(b.run_dir)
    for x, y in zip(ra, rb):
        for key in ("train_loss", "val_loss", "val_top1"):
            assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-5, abs=1e-6), key
    wa = torch.load(a.last, weights_only=True)["model"]
    wb = torch.load(b.last, weights_only=True)["model"]
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-5), k
    # frozen means frozen: the backbone's weights and its BatchNorm statistics (eval mode) are the initial ones
    head = head_path(create_model("fast", 10, 1, 8))
    for snap, w in ((cached, wa), (plain, wb)):
        moved = {k for k, v in snap.start.items() if not torch.equal(v.cpu().contiguous(), w[k])}
        assert moved == {f"{head}.weight", f"{head}.bias"}
    # and the cached run ran the backbone once over train and val, the image path every epoch
    assert cached.per_epoch[0] == cached.per_epoch[1] == cached.per_epoch[2]
    assert plain.per_epoch[2] - plain.per_epoch[1] >= 4  # 4 training batches (+ validation) per epoch


def test_multi_label_cached_features_train_the_head_as_the_image_path_does(frozen, pairs_csv, tmp_path, monkeypatch,
                                                                        capsys):
    """Multi-hot targets travel with the cached features: without augmentation the head, the per-epoch mAP and the
    thresholds chosen on validation (flip TTA: the mirror's features too) are the image path's."""
    opts = {k: v for k, v in frozen.items() if k != "subset"} | dict(
        data=[str(pairs_csv)], augment="none", epochs=3, batch_size=32, val_split=0.25, img_size=8,
        project=str(tmp_path))
    cached, plain = Snapshot(), Snapshot()
    a = tudui.train(**opts, name="cached", callbacks=[cached])
    assert "head on cached features" in capsys.readouterr().out.splitlines()[0]
    monkeypatch.setattr(features, "maybe_feature_trainer", lambda run: None)  # the image path, every epoch
    b = tudui.train(**opts, name="plain", callbacks=[plain])
    ra, rb = _rows(a.run_dir), _rows(b.run_dir)
    assert len(ra) == len(rb) == 3
    for x, y in zip(ra, rb):
        for key in ("train_loss", "val_loss", "val_map", "val_micro_f1", "val_macro_f1", "val_top1"):
            assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-5, abs=1e-6), key
    wa = torch.load(a.last, weights_only=True)["model"]
    wb = torch.load(b.last, weights_only=True)["model"]
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-5), k
    ta = torch.load(a.best, weights_only=True)["data"]["thresholds"]
    assert ta == pytest.approx(torch.load(b.best, weights_only=True)["data"]["thresholds"], abs=1e-5)
    assert cached.per_epoch[0] == cached.per_epoch[2] and plain.per_epoch[2] - plain.per_epoch[1] >= 3


def test_epochs_after_the_views_cost_no_backbone_pass(frozen, tmp_path):
    snap = Snapshot()
    r = tudui.train(**frozen, augment="flip", feature_views=2, epochs=4, project=str(tmp_path), name="views",
                    callbacks=[snap])
    first, second, third, fourth = snap.per_epoch
    assert first > 0 and second > first  # epoch 1: view 1 and validation; epoch 2: view 2
    assert third == second and fourth == second  # then the head trains on the cached views alone
    rows = _rows(r.run_dir)
    assert len(rows) == 4 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_the_first_line_says_the_head_trains_on_cached_features(frozen, tmp_path, capsys):
    tudui.train(**frozen, epochs=1, feature_views=2, project=str(tmp_path), name="line")
    first = capsys.readouterr().out.splitlines()[0]
    assert "head on cached features (2 view(s))" in first


def test_mixup_keeps_the_image_path_and_says_why(frozen, tmp_path, capsys):
    snap = Snapshot()
    tudui.train(**frozen, epochs=2, mixup=0.2, project=str(tmp_path), name="mix", callbacks=[snap])
    out = capsys.readouterr().out
    assert "note: the head trains on images, not cached features: --mixup/--cutmix blend images" in out
    assert snap.per_epoch[1] - snap.per_epoch[0] >= 4  # the backbone ran in epoch 2
