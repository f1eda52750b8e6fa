"""Class imbalance: balanced accuracy beside top-1 and macro-F1, which epoch best.pt keeps, and --balance."""
import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from tudui.engine.metrics import batch_counts, compute_metrics


def test_balanced_accuracy_is_scikit_learns_over_the_classes_present():
    """The mean recall of the classes the data holds (scikit-learn's balanced_accuracy_score, which averages over
    the classes in y_true): a model that answers the common class scores its share of the data in top-1, 1/K here."""
    rng = np.random.default_rng(2)
    targets = torch.tensor(rng.choice([0, 1, 4], 300, p=[0.8, 0.15, 0.05]))
    logits = torch.tensor(rng.normal(size=(300, 6)), dtype=torch.float32)
    logits[torch.arange(300), targets] += 1.0
    r = compute_metrics(batch_counts(logits, targets, 6))
    pred = logits.argmax(1)
    assert set(pred.tolist()) - {0, 1, 4}  # images taken for absent classes too
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(targets, pred), abs=1e-12)
    common = torch.zeros(300, 6)
    common[:, 0] = 1.0  # always the common class
    r = compute_metrics(batch_counts(common, targets, 6))
    assert r["top1"] == pytest.approx((targets == 0).double().mean().item()) and r["top1"] > 0.7
    assert r["balanced_accuracy"] == pytest.approx(1 / 3)


def test_every_epoch_and_the_final_summary_carry_balanced_accuracy_and_macro_f1(digits_run):
    """results.csv has a val_balanced_acc and a val_macro_f1 column, each epoch's, equal to metrics.json's at the
    best epoch (the final evaluation of best.pt's weights)."""
    with open(digits_run.run_dir / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["val_balanced_acc"] and r["val_macro_f1"] for r in rows)
    summary = json.loads((digits_run.run_dir / "metrics.json").read_text(encoding="utf-8"))
    best = rows[summary["best_epoch"] - 1]
    for col, key in (("val_balanced_acc", "balanced_accuracy"), ("val_macro_f1", "macro_f1")):
        assert float(best[col]) == pytest.approx(summary["val"][key], abs=1e-5)
    assert summary["val"]["balanced_accuracy"] != summary["val"]["top1"]  # a number of its own


# --- which epoch best.pt keeps --------------------------------------------------------------------------------------
def _run(best_by: str, best_score: float, history: list[dict]):
    from types import SimpleNamespace
    return SimpleNamespace(cfg=SimpleNamespace(best_by=best_by), best_score=best_score, best_epoch=1, history=history)


@pytest.mark.parametrize("best_by, better", [("top1", False), ("balanced-accuracy", True), ("macro-f1", True)])
def test_best_by_ranks_epochs_by_the_figure_it_names(best_by, better):
    """Epoch 2 classifies fewer images right than epoch 1 (top-1 0.80 < 0.90) but sees the rare classes (balanced
    accuracy 0.70 > 0.50, macro-F1 0.65 > 0.45): best.pt moves to it by balanced accuracy or macro-F1, not by top-1;
    a tie keeps going to the lower validation loss."""
    from tudui.engine import trainer

    first = {"top1": 0.90, "balanced_accuracy": 0.50, "macro_f1": 0.45, "loss": 0.3}
    history = [{"epoch": 1, "val_loss": first["loss"]}]
    run = _run(best_by, trainer.score(_run(best_by, 0, []), first), history)
    second = {"top1": 0.80, "balanced_accuracy": 0.70, "macro_f1": 0.65, "loss": 0.9}
    assert trainer.improves(run, second) is better
    tie = first | {"loss": 0.2}
    assert trainer.improves(run, tie) and not trainer.improves(run, first | {"loss": 0.4})


def test_best_by_auto_ranks_long_tailed_data_by_balanced_accuracy():
    """Over 10x from the largest training class to the smallest: balanced accuracy, even on a validation split too
    small for top-1 to rank epochs; up to 10x: as before (last on such a split, else top1)."""
    from tudui.core.config import TrainConfig
    from tudui.engine.choices import resolve_best_by

    cfg = TrainConfig(data=["x"])
    note = resolve_best_by(cfg, np.array([60, 20, 6]), np.array([540, 180, 50]))
    assert cfg.best_by == "balanced-accuracy" and "10.8x the images of the smallest" in note
    cfg = TrainConfig(data=["x"])
    resolve_best_by(cfg, np.array([60, 20, 6]), np.array([500, 180, 50]))
    assert cfg.best_by == "last"
    cfg = TrainConfig(data=["x"])
    resolve_best_by(cfg, np.array([60, 20, 12]), np.array([500, 180, 110]))
    assert cfg.best_by == "top1"
    cfg = TrainConfig(data=["x"], best_by="macro-f1")
    assert "macro-f1" in resolve_best_by(cfg, np.array([60, 20, 6]), np.array([540, 180, 50]))
    assert cfg.best_by == "macro-f1"


# --- --balance --------------------------------------------------------------------------------------------------------
def test_logit_adjustment_adds_tau_times_the_log_priors_to_the_logits():
    """The logit-adjusted loss (Menon et al. 2021, eq. 10) is the plain loss of logits + tau * log(prior), the prior
    of each class its share of the training images; with soft (mixup) targets too. Label smoothing spreads its share
    in proportion to prior^tau (next test)."""
    import torch.nn.functional as F

    from tudui.core.config import TrainConfig
    from tudui.engine.optim import create_loss

    counts = np.array([500, 120, 30, 5])
    prior = torch.tensor(counts / counts.sum(), dtype=torch.float32)
    logits = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(1))
    for tau, smoothing in ((1.0, 0.0), (1.5, 0.1)):
        cfg = TrainConfig(data=["x"], balance="logit-adjust", logit_tau=tau, label_smoothing=smoothing)
        loss = create_loss(cfg, counts, torch.device("cpu"))
        target = (1 - smoothing) * F.one_hot(y, 4).float() + smoothing * prior ** tau / (prior ** tau).sum()
        want = F.cross_entropy(logits + tau * prior.log(), target)
        assert loss(logits, y) == pytest.approx(want.item(), rel=1e-5)
        assert loss(logits, y) != pytest.approx(F.cross_entropy(logits, y, label_smoothing=smoothing).item())
    soft = torch.softmax(torch.randn(16, 4), 1)
    cfg = TrainConfig(data=["x"], balance="logit-adjust", label_smoothing=0.0)  # the default tau
    tau = cfg.logit_tau
    assert create_loss(cfg, counts, torch.device("cpu"))(logits, soft) == \
        pytest.approx(F.cross_entropy(logits + tau * prior.log(), soft).item(), rel=1e-6)


def test_label_smoothing_under_logit_adjustment_leaves_rare_classes_no_higher_than_common_ones():
    """Label smoothing gives every class but the target the same share of the model's probabilities, however rare
    the class: minimised from zero logits for an image of the largest class, the smoothed logit-adjusted loss leaves
    the model's own softmax even over the two others. Smoothing evenly in the adjusted space instead (torch's
    label_smoothing on the adjusted logits, tudui before) leaves a class 10x rarer 10x more probable on every image
    (at tau 1), so rare classes win where they should not."""
    import torch.nn.functional as F

    from tudui.core.config import TrainConfig
    from tudui.engine.optim import create_loss

    counts, eps = np.array([6000, 600, 60]), 0.1
    cfg = TrainConfig(data=["x"], balance="logit-adjust", logit_tau=1.0, label_smoothing=eps)
    adjustment = torch.log(torch.tensor(counts / counts.sum(), dtype=torch.float32))
    y = torch.tensor([0])
    p = _minimised(create_loss(cfg, counts, torch.device("cpu")), y)
    assert p[1].item() == pytest.approx(p[2].item(), rel=1e-3) and p[0] > 0.8
    even = _minimised(lambda f, y: F.cross_entropy(f + adjustment, y, label_smoothing=eps), y)
    assert even[2].item() == pytest.approx(10 * even[1].item(), rel=1e-3)


@pytest.mark.parametrize("given, balance, multi_label, want", [
    ("auto", "none", False, 0.1), ("auto", "sampler", False, 0.1), ("auto", "loss", False, 0.1),
    ("auto", "logit-adjust", False, 0.2), ("auto", "none", True, 0.1), ("0.05", "logit-adjust", False, 0.05),
    ("AUTO", "logit-adjust", False, 0.2)])
def test_label_smoothing_auto_is_0_1_and_0_2_under_logit_adjustment(given, balance, multi_label, want):
    """--label-smoothing auto settles once --balance is settled: 0.2 under logit adjustment (where it measured
    better on long-tailed data), the recipe's 0.1 otherwise and for multi-label data; a number given (as the command
    line gives it, text) is kept. The first line says so only when the choice is not the usual 0.1."""
    from tudui.core.config import TrainConfig
    from tudui.engine.choices import resolve_smoothing

    cfg = TrainConfig(data=["x"], balance=balance, label_smoothing=given)
    note = resolve_smoothing(cfg, multi_label)
    assert cfg.label_smoothing == want
    assert (note is not None) == (given.lower() == "auto" and want != 0.1)
    assert resolve_smoothing(cfg, multi_label) is None and cfg.label_smoothing == want  # settled once


def test_label_smoothing_takes_a_number_or_auto_and_says_so_otherwise():
    from tudui.core.config import TrainConfig
    from tudui.core.errors import TuduiError

    assert TrainConfig(data=["x"]).label_smoothing == "auto"
    with pytest.raises(TuduiError, match=r"^--label-smoothing takes a number or auto, got 'some'$"):
        TrainConfig(data=["x"], label_smoothing="some")
    with pytest.raises(TuduiError, match=r"--label-smoothing must be in \[0, 1\)"):
        TrainConfig(data=["x"], label_smoothing="1.5")


def test_balance_loss_is_class_weights_auto():
    """--balance loss weights the loss by inverse class frequency, as --class-weights auto did (which now sets it);
    the two cannot ask for different things. Each image's whole loss, its label smoothing included, is weighted by
    its class's weight (torch's weighted label smoothing would weigh each class's smoothing term by that class's
    weight instead, next test); without smoothing it is torch's weighted cross-entropy."""
    import torch.nn.functional as F

    from tudui.core.config import TrainConfig
    from tudui.core.errors import TuduiError
    from tudui.engine.optim import class_weights, create_loss

    counts = np.array([500, 120, 30, 5])
    logits, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    w = class_weights(counts, "cpu")
    smoothed = 0.9 * F.one_hot(y, 4).float() + 0.1 / 4
    per_image = -(smoothed * F.log_softmax(logits, 1)).sum(1)
    want = (per_image * w[y]).sum() / w[y].sum()
    for cfg in (TrainConfig(data=["x"], balance="loss"), TrainConfig(data=["x"], class_weights="auto")):
        assert cfg.balance == "loss"
        assert create_loss(cfg, counts, torch.device("cpu"))(logits, y) == pytest.approx(want.item(), rel=1e-6)
    plain = create_loss(TrainConfig(data=["x"], balance="loss", label_smoothing=0.0), counts, torch.device("cpu"))
    assert plain(logits, y) == pytest.approx(F.cross_entropy(logits, y, weight=w).item(), rel=1e-6)
    with pytest.raises(TuduiError, match="--class-weights auto is --balance loss"):
        TrainConfig(data=["x"], class_weights="auto", balance="sampler")


def test_label_smoothing_under_class_weights_leaves_rare_classes_no_higher_than_common_ones():
    """Minimised for an image of the largest class, the class-weighted smoothed loss leaves the model's softmax even
    over the other classes; torch's weighted label smoothing would leave a class 10x rarer about 10x more probable."""
    import torch.nn.functional as F

    from tudui.core.config import TrainConfig
    from tudui.engine.optim import class_weights, create_loss

    counts = np.array([6000, 600, 60])
    loss = create_loss(TrainConfig(data=["x"], balance="loss", label_smoothing=0.1), counts, torch.device("cpu"))
    w = class_weights(counts, "cpu")
    y = torch.tensor([0])
    p = _minimised(loss, y)
    assert p[1].item() == pytest.approx(p[2].item(), rel=1e-3) and p[0] > 0.8
    torch_smoothing = _minimised(lambda f, y: F.cross_entropy(f, y, weight=w, label_smoothing=0.1), y)
    assert torch_smoothing[2].item() == pytest.approx(10 * torch_smoothing[1].item(), rel=1e-3)


def _minimised(loss, y, k=3):
    """The softmax (k,) of the free logits of one image of class `y` where `loss` is lowest (L-BFGS from 0)."""
    f = torch.zeros(1, k, requires_grad=True)
    opt = torch.optim.LBFGS([f], max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        value = loss(f, y)
        value.backward()
        return value

    opt.step(closure)
    return torch.softmax(f.detach(), 1)[0]


def _long_tailed(root, per_class=(36, 18, 9, 5, 3)):
    """Class folders of real 8x8 digits, 12x from the largest class to the smallest (13.5x once a quarter of each
    is held out: 27 to 2)."""
    from PIL import Image

    from tudui.data.sources import load_named

    digits = load_named("digits", False)
    for c, n in enumerate(per_class):
        (root / f"digit {c}").mkdir(parents=True)
        for i in np.flatnonzero(digits.targets == c)[:n]:
            Image.fromarray(digits.images[i][..., 0]).save(root / f"digit {c}" / f"{i}.png")
    return root


def test_a_long_tailed_folder_trains_balanced_by_default(tmp_path, capsys):
    """Default options on a long-tailed folder: --balance auto says in a note: line that it adjusts the logits, the
    training criterion is the logit-adjusted loss, best.pt is the epoch of the highest validation balanced accuracy
    (results.csv's column), and config.yaml records both choices for --config and --resume."""
    import yaml

    import tudui
    from tudui.engine.optim import LogitAdjusted

    seen = {}

    from tudui.engine.callbacks import Callback

    class Spy(Callback):
        def on_fit_start(self, run):
            seen["criterion"] = run.criterion

    data = _long_tailed(tmp_path / "long tail")
    result = tudui.train(data=str(data), model="fast", epochs=4, batch_size=16, val_split=0.25, device="cpu",
                         project=str(tmp_path), name="lt", plots=False, tensorboard=False, callbacks=[Spy()])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].startswith("note: balance logit-adjust (auto: the largest class has 13.5x the images of the "
                               "smallest")
    assert lines[2] == "note: label smoothing 0.2 (auto: under --balance logit-adjust; 0.1 otherwise)"
    assert isinstance(seen["criterion"], LogitAdjusted)
    assert seen["criterion"].loss.smoothing == 0.2  # the smoothed loss under the adjustment takes the auto smoothing
    assert "balanced accuracy" in lines[3] and "epoch 1/4" in lines[3]  # each epoch shows it
    assert f"val balanced accuracy {result.val['balanced_accuracy']:.2%}; weights" in out
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert (saved["balance"], saved["best_by"], saved["label_smoothing"]) == ("logit-adjust", "balanced-accuracy", 0.2)
    with open(result.run_dir / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    best = max(rows, key=lambda r: (float(r["val_balanced_acc"]), -float(r["val_loss"])))
    assert result.best_epoch == int(best["epoch"])


@pytest.mark.parametrize("cache", ["ram", "off"])  # the in-memory loader, and the DataLoader of files
def test_a_sampler_run_resumed_after_a_crash_ends_bit_identical(tmp_path, cache):
    """--balance sampler draws each epoch from (seed, epoch) alone: a run that crashed after epoch 1 and was resumed
    ends with exactly the weights of a run that was never interrupted."""
    import tudui
    from tudui.core.checkpoint import load_checkpoint
    from tudui.engine.callbacks import Callback

    class CrashAfterEpoch1(Callback):
        def on_epoch_end(self, run, row, val):
            if run.epoch == 1:
                raise RuntimeError("simulated crash")

    opts = dict(data=str(_long_tailed(tmp_path / "data")), model="fast", batch_size=8, epochs=2, balance="sampler",
                cache=cache, workers=0, device="cpu", deterministic=True, project=str(tmp_path), plots=False,
                tensorboard=False)
    tudui.train(name="full", **opts)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tudui.train(name="crashed", callbacks=[CrashAfterEpoch1()], **opts)
    tudui.train(resume=str(tmp_path / "crashed"))
    a, b = (load_checkpoint(tmp_path / name, prefer="last") for name in ("full", "crashed"))
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.parametrize("flags, message", [
    (["--balance", "loss", "--loss", "mse"], "--balance loss weights the classes in cross-entropy or nll"),
    (["--class-weights", "auto", "--balance", "sampler"], "--class-weights auto is --balance loss"),
    (["--logit-tau", "-1"], "--logit-tau must be at least 0"),
    (["--balance", "sampler", "--overfit-batches", "2"], "--overfit-batches trains on the same batches"),
])
def test_balance_options_that_cannot_work_are_one_error_line(tmp_path, capsys, flags, message):
    """Refused before any data is read: one `error:` line saying what to do, exit 2, no run folder."""
    from tudui.cli import main as tudui_main

    assert tudui_main(["train", "--data", "digits", "--project", str(tmp_path / "runs"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_select_by_is_another_spelling_of_best_by(tmp_path):
    """`--select-by balanced-accuracy` sets --best-by (one option, one config key: best_by)."""
    import argparse

    from tudui.cli import add_train_args, options_of
    from tudui.core.config import TrainConfig

    p = argparse.ArgumentParser()
    add_train_args(p)
    args = p.parse_args(["--data", "digits", "--select-by", "balanced-accuracy"])
    assert options_of(args, TrainConfig)["best_by"] == "balanced-accuracy"
