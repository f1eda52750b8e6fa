"""The training toolbox: strong augmentation, mixup/cutmix, EMA, lr-find, --time, debug runs, accumulation."""
from __future__ import annotations

import csv
import math
import re
import time

import pytest
import torch
import yaml

import tudui
from tudui.cli import main as tudui_main
from tudui.core.checkpoint import load_checkpoint
from tudui.engine.callbacks import Callback
from tudui.engine.ema import ModelEMA
from tudui.engine.lr_find import LRFinding, lr_range_test, steep, suggest, valley

from tests.conftest import REPO, sigkill_after_line
from tests.engine.test_resume import metric_rows

QUIET = dict(plots=False, tensorboard=False, device="cpu")
TINY = ["--data", "digits", "--model", "mnist-cnn", "--batch-size", "64", "--subset", "400", "--device", "cpu"]


def test_ema_follows_the_formula():
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 2.0))
    assert torch.allclose(ema.module.weight, d * w0 + (1 - d) * model.weight)


class WeightsPerEpoch(Callback):
    """The averaged and the raw weights at the end of every epoch (after its checkpoints were written)."""

    def __init__(self) -> None:
        self.ema, self.raw = {}, {}

    def on_epoch_end(self, run, row, val) -> None:
        copy = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
        self.ema[row["epoch"]], self.raw[row["epoch"]] = copy(run.ema.module), copy(run.model)


def test_ema_is_validated_and_saved_as_best(tmp_path):
    seen = WeightsPerEpoch()
    r = tudui.train(data="digits", model="mnist-cnn", epochs=2, batch_size=64, ema=True, ema_tau=5, project=str(tmp_path),
                    name="e", callbacks=[seen], **QUIET)
    last, best = load_checkpoint(r.last), load_checkpoint(r.best)
    assert "ema" in last and "ema" not in best and last["ema"]["updates"] == last["step"]
    assert sorted(seen.ema) == [1, 2] and best["epoch"] in (1, 2)
    # best.pt holds the averaged weights of its epoch, whichever epoch was best, not the raw ones
    for k, v in best["model"].items():
        assert torch.equal(v, seen.ema[best["epoch"]][k]), k
    assert any(not torch.equal(v, seen.raw[best["epoch"]][k]) for k, v in best["model"].items())
    for k, v in last["ema"]["module"].items():
        assert torch.equal(v, seen.ema[2][k]), k  # last.pt keeps the average beside the raw weights
    # the epoch's validation figures are the average's: best.pt evaluated again gives them
    again = tudui.evaluate(str(r.best), "digits", "val", device="cpu")
    row = r.history[best["epoch"] - 1]
    assert again["loss"] == pytest.approx(float(row["val_loss"]), rel=1e-4)
    assert again["top1"] == pytest.approx(float(row["val_top1"]), abs=1e-4)


def test_resume_after_sigkill_is_bit_exact_with_ema_and_strong_augmentation(tmp_path):
    extra = ["--augment", "trivialaugment", "--erase", "0.3", "--mixup", "0.2", "--cutmix", "1.0", "--ema",
             "--accumulate", "2", "--clip-grad", "5", "--epochs", "3", "--deterministic", "--no-plots",
             "--no-tensorboard", "--project", str(tmp_path)]
    assert tudui_main(["train", *TINY, *extra, "--name", "full"]) == 0
    sigkill_after_line("train", *TINY, *extra, "--name", "killed", line="epoch 1/3")
    killed = tmp_path / "killed"
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1
    assert tudui_main(["train", "--resume", str(killed)]) == 0
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (tmp_path / "full", killed))
    for part in ("model",):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), k
    for k in a["ema"]["module"]:
        assert torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]), k
    assert metric_rows(tmp_path / "full") == metric_rows(killed)
    torch.use_deterministic_algorithms(False)


def test_accumulation_counts_the_schedule_in_optimiser_steps(tmp_path):
    r = tudui.train(data="digits", model="mnist-cnn", epochs=2, batch_size=64, subset=400, accumulate=3,
                    project=str(tmp_path), name="a", **QUIET)
    # 400 images, 10% held out -> 360 -> 5 batches of 64 per epoch -> 2 optimiser steps per epoch
    assert load_checkpoint(r.last)["step"] == 2 * math.ceil(5 / 3)


def test_lr_range_test_leaves_the_weights_and_suggests_a_rate():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = lr_range_test(model, [(x, y)], lambda a, b: (a, b), torch.nn.CrossEntropyLoss(),
                          lambda: torch.optim.SGD(model.parameters(), lr=1e-7), torch.device("cpu"), steps=60)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert 1e-7 <= found.suggestion <= 10 and len(found.lrs) == len(found.losses) > 10
    # steep: on a curve that falls fastest at lr 1e-2, that is the steepest-descent point
    lrs = [10 ** (-5 + i / 10) for i in range(60)]
    losses = [2 - math.tanh((math.log10(v) + 2) * 2) for v in lrs]
    assert abs(math.log10(steep(lrs, losses)) + 2) < 0.11
    # the suggestion, a one-cycle peak: 4x that point, as long as it stays under a tenth of the minimum's rate (the
    # curve is lowest at its end, lr 0.8): ~4e-2
    assert abs(math.log10(suggest(lrs, losses)) - math.log10(4e-2)) < 0.11
    # ... and capped at that tenth where the minimum comes sooner: the same curve, diverging after lr 0.1
    turned = [v if lr <= 0.1 else losses[40] + (lr - 0.1) for lr, v in zip(lrs, losses)]
    assert abs(math.log10(suggest(lrs, turned)) - math.log10(0.1 / 10)) < 0.11


def _measured_curve() -> tuple[list[float], list[float]]:
    """A range test `tudui lr-find` measured: model fast on 2,000 Fashion-MNIST images as PNG class folders."""
    with open(REPO / "tests" / "fixtures" / "lr_find_fmnist_folder.csv") as f:
        rows = list(csv.DictReader(f))
    return [float(r["lr"]) for r in rows], [float(r["smoothed_loss"]) for r in rows]


def test_lr_find_suggests_a_one_cycle_peak_and_says_when_to_keep_the_default():
    """On a measured curve whose steepest descent is at 0.000756 (a rate that trains 2-5 points worse than the
    default 3e-3 under one-cycle), the suggestion is a one-cycle peak several times higher, and the finding says the
    default is as good a choice (it lies between the steep point and a tenth of the minimum's rate)."""
    lrs, losses = _measured_curve()
    assert steep(lrs, losses) == pytest.approx(7.56e-4, rel=0.01)
    s = suggest(lrs, losses)
    assert 2 * 7.56e-4 < s <= 0.1 * lrs[losses.index(min(losses))] * 1.0001
    found = LRFinding(lrs=lrs, losses=losses, suggestion=s, steep=steep(lrs, losses), valley=valley(lrs, losses),
                      minimum=lrs[losses.index(min(losses))], default=3e-3)
    assert found.keep_default and found.chosen == 3e-3
    far = LRFinding(suggestion=0.05, steep=0.012, valley=0.0006, minimum=0.55, default=3e-3)
    assert not far.keep_default and far.chosen == 0.05  # the default below the band and 16x below the suggestion
    near = LRFinding(suggestion=0.005, steep=0.005, valley=0.001, minimum=0.02, default=3e-3)
    assert near.keep_default  # outside the band, but within a factor of 2: one range test cannot tell them apart
    assert not LRFinding(suggestion=0.005, steep=0.005, valley=0.001, minimum=0.02).keep_default  # no default known


def _finding(suggestion: float, steep_at: float, minimum: float) -> LRFinding:
    return LRFinding(lrs=[1e-7, 10.0], losses=[2.3, 2.2], raw=[2.3, 2.2], suggestion=suggestion, steep=steep_at,
                     valley=steep_at / 4, minimum=minimum, default=3e-3)


def test_lr_find_output_says_whether_to_keep_the_default(monkeypatch, capsys, tmp_path):
    from tudui import api

    for found, says, not_says in ((_finding(0.00179, 0.000756, 0.0179), "keep --lr 0.003", "use it:"),
                                  (_finding(0.05, 0.012, 0.55), "use it: tudui train ... --lr 0.05", "keep --lr")):
        monkeypatch.setattr(api, "lr_find", lambda *a, _f=found, **k: (_f, [tmp_path / "lr_find.png"]))
        assert tudui_main(["lr-find", "--data", "digits"]) == 0
        out = capsys.readouterr().out
        assert says in out and not_says not in out, out
        assert f"suggested learning rate: {found.suggestion:.3g} (one-cycle peak" in out


def test_lr_auto_keeps_the_default_where_lr_find_says_so(monkeypatch, tmp_path, capsys):
    import tudui.engine.setup as setup_module

    seen = {}

    def fake_test(*args, default=None, **kwargs):
        seen["default"] = default
        found = _finding(0.00179, 0.000756, 0.0179)
        found.default = default
        return found

    monkeypatch.setattr(setup_module, "lr_range_test", fake_test)
    r = tudui.train(data="digits", model="mnist-cnn", epochs=1, subset=200, lr="auto", project=str(tmp_path),
                    name="auto", **QUIET)
    assert seen["default"] == 0.003 and load_checkpoint(r.last)["config"]["lr"] == 0.003
    assert "--lr auto: 0.003 (the default: the range test's 0.00179 is no better" in capsys.readouterr().out


def assert_documented_sweep(lrs: list[float], steps: int) -> None:
    """An exponential sweep from 1e-7 towards 10 in `steps` steps (stopped early where the loss diverged)."""
    gamma = (10 / 1e-7) ** (1 / (steps - 1))
    assert 10 < len(lrs) <= steps and lrs[0] == pytest.approx(1e-7, rel=1e-5)
    assert all(b / a == pytest.approx(gamma, rel=1e-4) for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] <= 10 * (1 + 1e-5)


def test_lr_find_command_and_lr_auto(tmp_path, capsys, monkeypatch):
    assert tudui_main(["lr-find", *TINY, "--project", str(tmp_path), "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "lr-find" / "lr_find.png").is_file()
    rows = list(csv.DictReader(open(tmp_path / "lr-find" / "lr_find.csv")))
    lrs = [float(row["lr"]) for row in rows]
    assert_documented_sweep(lrs, 40)
    suggested = re.search(r"^suggested learning rate: (\S+) \(.*; (\d+) steps from (\S+) to (\S+)\)$", out, re.M)
    assert suggested and int(suggested.group(2)) == len(lrs)
    assert float(suggested.group(3)) == pytest.approx(lrs[0], rel=0.05)
    assert float(suggested.group(4)) == pytest.approx(lrs[-1], rel=1e-3)
    rate = float(suggested.group(1))
    assert lrs[0] < rate < lrs[-1] and any(rate == pytest.approx(v, rel=5e-3) for v in lrs)  # one of the swept rates

    from tudui.engine import setup as engine_setup
    sweeps = []

    def recorded(*args, **kwargs):
        sweeps.append(lr_range_test(*args, **kwargs))
        return sweeps[-1]
    monkeypatch.setattr(engine_setup, "lr_range_test", recorded)
    r = tudui.train(data="digits", model="mnist-cnn", epochs=1, lr="auto", project=str(tmp_path), name="auto",
                    **QUIET)
    [found] = sweeps
    assert_documented_sweep(found.lrs, 100)  # --lr auto sweeps as `tudui lr-find` does by default
    lr = load_checkpoint(r.last)["config"]["lr"]
    assert isinstance(lr, float) and lr == float(f"{found.suggestion:.3g}")  # the sweep's suggestion, 3 digits
    assert found.lrs[0] < lr < found.lrs[-1]  # inside the part of the sweep that ran
    assert f"--lr auto: {lr:g} ({found.rule}; {len(found.lrs)} steps of the range test)" in capsys.readouterr().out
    assert yaml.safe_load((r.run_dir / "config.yaml").read_text())["lr"] == lr  # recorded, so --resume repeats it


def test_time_budget_ends_within_budget_plus_one_epoch(tmp_path):
    budget_s = 4.0
    t0 = time.perf_counter()
    r = tudui.train(data="digits", model="mnist-cnn", epochs=1000, time=budget_s / 60, project=str(tmp_path),
                    name="t", **QUIET)
    elapsed = time.perf_counter() - t0
    rows = list(csv.DictReader(open(r.run_dir / "results.csv")))
    epoch_s = max(float(row["epoch_time_s"]) for row in rows)
    assert 1 <= len(rows) < 1000  # planned from the measured epochs, not --epochs 1000
    # set-up and the final test evaluation come on top of the training budget
    assert sum(float(row["epoch_time_s"]) for row in rows) <= budget_s + epoch_s
    assert elapsed < budget_s + 60


def test_fast_dev_run_writes_every_artefact(tmp_path):
    r = tudui.train(data="digits", model="mnist-cnn", fast_dev_run=True, epochs=50, batch_size=128,
                    project=str(tmp_path), name="f", device="cpu")
    names = {p.name for p in r.run_dir.iterdir()}
    assert {"best.pt", "last.pt", "results.csv", "config.yaml", "env.yaml", "metrics.json", "curves.png",
            "confusion_matrix.png", "train_batch.png"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert len(list(csv.DictReader(open(r.run_dir / "results.csv")))) == 1
    assert r.val["n"] == 128 and r.test["n"] == 128  # one batch (128) of each split


def test_fraction_takes_a_share_of_the_training_images():
    from tudui.data import load_splits

    full, _, _ = load_splits(["digits"], seed=1)
    part, _, _ = load_splits(["digits"], seed=1, fraction=0.25)
    assert len(part) == round(0.25 * len(full)) and set(part.targets.tolist()) <= set(full.targets.tolist())


def test_overfit_batches_learns_them(tmp_path):
    r = tudui.train(data="digits", model="fast", overfit_batches=1, batch_size=32, epochs=30, project=str(tmp_path),
                    name="o", **QUIET)
    assert r.val["n"] == 32 and r.val["top1"] >= 0.9


def test_dataloader_path_with_every_augmentation(tmp_path, fmnist_folders):
    r = tudui.train(data=str(fmnist_folders), model="mnist-cnn", epochs=1, memory="off", cache="off",
                    augment="randaugment", erase=0.4, cutmix=1.0, mixup=0.2, ema=True, project=str(tmp_path),
                    name="files", **QUIET)
    assert r.val["n"] == 200  # the 20-per-class val folder, read through the DataLoader path
    assert load_checkpoint(r.last)["config"]["augment"] == "randaugment"


@pytest.mark.parametrize("flag, value, message", [
    ("--mixup", "-0.5", "--mixup must be at least 0"), ("--erase", "1.5", "--erase must be in [0, 1]"),
    ("--accumulate", "0", "--accumulate must be at least 1"), ("--lr", "fast", "--lr takes a number or auto"),
    ("--fraction", "0", "--fraction must be in (0, 1]"), ("--time", "-1", "--time is a budget in minutes"),
])
def test_bad_values_are_one_line_errors(flag, value, message, capsys):
    assert tudui_main(["train", "--data", "digits", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_threads_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        tudui.train(data="digits", model="mnist-cnn", epochs=1, threads=1, project=str(tmp_path), name="th", **QUIET)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_compile_trains(tmp_path):
    r = tudui.train(data="digits", model="mnist-cnn", epochs=1, compile=True, project=str(tmp_path), name="c", **QUIET)
    assert r.val["top1"] > 0.1
