"""--fine-tune N: the head alone for N epochs (cached features), then everything with discriminative rates."""
from __future__ import annotations

import csv

import pytest
import torch

import tudui
from tudui.cli import main as tudui_main
from tudui.core.config import TrainConfig
from tudui.core.errors import TuduiError
from tudui.engine.callbacks import Callback
from tudui.models.surgery import head_path

BASE = dict(data=["digits"], model="fast", batch_size=64, subset=256, plots=False, tensorboard=False, amp="off",
            lr=0.01, scheduler="cosine")


class Phases(Callback):
    """Per optimisation step: (epoch, head lr, backbone lr, backbone trainable?, backbone in train mode?)."""

    def __init__(self) -> None:
        self.steps, self.start, self.after_head = [], None, None

    def on_fit_start(self, run) -> None:
        self.head = head_path(run.model)
        self.start = {k: v.detach().clone() for k, v in run.model.state_dict().items()}

    def on_train_batch(self, run, step, x, y, loss) -> None:
        groups = run.optimizer.param_groups
        head_lr = next(g["lr"] for g in groups if not g.get("backbone"))
        backbone_lr = next(g["lr"] for g in groups if g.get("backbone"))
        bn = next(m for n, m in run.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
        trainable = all(p.requires_grad for n, p in run.model.named_parameters() if not n.startswith(self.head + "."))
        self.steps.append((run.epoch, head_lr, backbone_lr, trainable, bn.training))

    def on_epoch_end(self, run, row, val) -> None:
        if run.epoch == 2:
            self.after_head = {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def test_fine_tune_unfreezes_at_its_epoch_with_the_backbone_at_its_own_rate(tmp_path):
    seen = Phases()
    r = tudui.train(**BASE, epochs=4, fine_tune=2, backbone_lr_mult=0.1, project=str(tmp_path), name="ft",
                    callbacks=[seen])
    with open(r.run_dir / "results.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3", "4"]  # one run, one table
    head_phase = [s for s in seen.steps if s[0] < 2]
    full_phase = [s for s in seen.steps if s[0] >= 2]
    assert len(head_phase) == len(full_phase) == 8  # 4 steps per epoch
    # epochs 1-2: the backbone frozen, in eval mode, at rate 0 (the rates are read after each step, so the head
    # phase's last record already holds phase 2's first rate); epochs 3-4: trainable, in train mode, lr x 0.1
    assert all(not s[3] and not s[4] for s in head_phase) and all(s[2] == 0.0 for s in head_phase[:-1])
    assert all(s[3] and s[4] for s in full_phase)
    for _, head_lr, backbone_lr, _, _ in full_phase:
        assert backbone_lr == pytest.approx(0.1 * head_lr, rel=1e-9)
    # each phase has its own cosine curve: the head's rate falls during phase 1 and starts again at the top
    assert head_phase[0][1] > head_phase[-2][1] and full_phase[0][1] > head_phase[-2][1]
    assert full_phase[0][1] == pytest.approx(0.01 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 8)).item()),
                                             rel=1e-6)  # one step into phase 2's cosine of 8 steps
    # the backbone did not move in the head phase (BatchNorm statistics included), and did after
    moved = {k for k, v in seen.start.items() if not torch.equal(v, seen.after_head[k])}
    assert moved == {f"{seen.head}.weight", f"{seen.head}.bias"}
    final = torch.load(r.last, weights_only=True)["model"]
    assert not torch.equal(final["0.weight"], seen.start["0.weight"].cpu().contiguous())


def test_fine_tune_resumes_in_each_phase_and_exactly_at_the_unfreeze_epoch(tmp_path):
    """--fine-tune 2 --epochs 4 stopped after epoch 1 (the head phase goes on, from cached features), after epoch 2
    (the next epoch is the first to unfreeze) and after epoch 3 (in the second phase): each resumed run ends with
    the weights of the uninterrupted run, bit for bit, and trains its epochs frozen or unfrozen as the schedule
    says."""
    # 2 steps per epoch; random shifts, so each view of the cached features (and a resumed run's) has its own draws
    opts = BASE | dict(subset=128, augment="crop", epochs=4, fine_tune=2, project=str(tmp_path))
    whole = torch.load(tudui.train(**opts, name="whole").last, weights_only=True)["model"]
    for stop in (1, 2, 3):
        with pytest.raises(KeyboardInterrupt):
            tudui.train(**opts, name=f"stop{stop}", callbacks=[StopAfter(stop)])
        seen = Phases()
        resumed = tudui.train(resume=str(tmp_path / f"stop{stop}"), callbacks=[seen])
        epochs = sorted({s[0] for s in seen.steps})
        assert epochs == list(range(stop, 4)), epochs  # only the epochs left were trained
        for epoch, _, _, trainable, bn_training in seen.steps:  # frozen (and in eval mode) in the head phase only
            assert trainable == bn_training == (epoch >= 2), (stop, epoch)
        final = torch.load(resumed.last, weights_only=True)["model"]
        for k in whole:
            assert torch.equal(whole[k], final[k]), (stop, k)


class StopAfter(Callback):
    """Stops the run (as Ctrl-C would, at an epoch end) once `epochs` epochs are done."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, run, row, val) -> None:
        if run.epoch == self.epochs:
            raise KeyboardInterrupt


@pytest.mark.parametrize("values, message", [
    (dict(fine_tune=2, freeze_backbone=True, weights="start.pth"), "give one of them"),
    (dict(fine_tune=4, epochs=4), "--epochs counts both phases"),
    (dict(backbone_lr_mult=0), "--backbone-lr-mult must be positive"),
    (dict(feature_views=0), "--feature-views must be at least 1"),
])
def test_fine_tune_options_out_of_range_are_one_line_errors(values, message):
    with pytest.raises(TuduiError, match=message):
        TrainConfig(**values)


def test_fine_tune_mistake_from_the_command_line(capsys):
    assert tudui_main(["train", "--data", "digits", "--fine-tune", "3", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --fine-tune 3 leaves no epoch") and len(err.strip().splitlines()) == 1


def _lr_column(run_dir) -> list[float]:
    with open(run_dir / "results.csv", newline="") as f:
        return [float(row["lr"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("scheduler, warmup", [("onecycle", 1.0), ("cosine", 0.5)])
def test_each_fine_tune_phase_has_the_learning_rates_of_a_plain_run_of_its_length(tmp_path, scheduler, warmup):
    """--fine-tune 2 --epochs 5: the lr column (each epoch's first step) of epochs 1-2 is a plain 2-epoch run's and of
    epochs 3-5 a plain 3-epoch run's, --warmup-epochs included: one function builds both curves."""
    opts = BASE | dict(scheduler=scheduler, warmup_epochs=warmup, project=str(tmp_path))
    tuned = _lr_column(tudui.train(**opts, epochs=5, fine_tune=2, name="ft").run_dir)
    head = _lr_column(tudui.train(**opts, epochs=2, name="plain2").run_dir)
    rest = _lr_column(tudui.train(**opts, epochs=3, name="plain3").run_dir)
    assert tuned == pytest.approx(head + rest, rel=1e-5)  # results.csv holds 6 significant digits
