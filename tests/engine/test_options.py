"""Training options the README promises, each checked by what it must do to the run (not only that it is accepted).

--loss mse|l1|nll, --class-weights auto, no weight decay on biases and norm layers, --scheduler step|cosine with
--warmup-epochs, --amp on the CPU, --weights FILE with a torchvision state_dict, --freeze-backbone, --augment;
--momentum, --crop-scale, --rotate, --color-jitter, --ema-decay and --mix-prob reaching the objects that use them.
"""
from __future__ import annotations

import copy
import csv
import inspect
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tudui
from tudui.cli import main as tudui_main
from tudui.core.config import TrainConfig
from tudui.engine.callbacks import Callback
from tudui.engine.optim import create_loss, create_optimizer, create_scheduler, lr_curve, param_groups
from tudui.engine.setup import setup
from tudui.models import create_model

# A few hundred 8x8 digits: 4 optimisation steps of 64 per epoch; no pictures or event files (not tested here).
SMALL = dict(data=["digits"], model="mnist-cnn", batch_size=64, subset=256, plots=False, tensorboard=False)


def lr_column(run_dir) -> list[float]:
    with open(run_dir / "results.csv", newline="") as f:
        return [float(r["lr"]) for r in csv.DictReader(f)]


# --- losses -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, fn", [("mse", F.mse_loss), ("l1", F.l1_loss)])
def test_mse_and_l1_compare_softmax_with_one_hot(kind, fn):
    """The course's nn.MSELoss / nn.L1Loss on class probabilities against one-hot targets."""
    logits, y = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 3, 1])
    loss = create_loss(TrainConfig(loss=kind), [1, 1, 1, 1], torch.device("cpu"))
    want = fn(logits.softmax(1), F.one_hot(y, 4).float())
    assert loss(logits, y).item() == pytest.approx(want.item(), rel=1e-6)
    assert loss(logits, y).item() != pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-3)


def test_training_with_mse_loss_learns(tmp_path):
    assert tudui_main(["train", "--data", "digits", "--model", "mnist-cnn", "--loss", "mse", "--epochs", "3",
                       "--batch-size", "64", "--no-plots", "--no-tensorboard", "--project", str(tmp_path),
                       "--name", "mse"]) == 0
    with open(tmp_path / "mse" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["val_top1"]) > 0.5  # 10 classes: chance is 0.1
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_class_weights_auto_is_inverse_frequency():
    counts = [30, 10, 0, 60]  # class 2 has no training image: weight 0, not infinity
    loss = create_loss(TrainConfig(class_weights="auto", label_smoothing=0.0), counts, torch.device("cpu"))
    # 1/count is proportional to (2, 6, -, 1); normalised to mean 1 over the classes present.
    assert torch.allclose(loss.weight, torch.tensor([2 / 3, 2.0, 0.0, 1 / 3]))
    logits, y = torch.randn(5, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 3, 3, 1])
    assert loss(logits, y).item() == pytest.approx(F.cross_entropy(logits, y, weight=loss.weight).item(), rel=1e-6)
    assert create_loss(TrainConfig(), counts, torch.device("cpu")).weight is None  # default: unweighted


def test_class_weights_auto_reaches_the_training_criterion(tmp_path):
    run = setup(TrainConfig(**SMALL, class_weights="auto", project=str(tmp_path), name="cw"))
    counts = torch.as_tensor(run.data.train.counts(), dtype=torch.float32)
    inverse = 1 / counts
    assert torch.allclose(run.criterion.weight, inverse / inverse.mean())


# --- optimizer --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "adam"])
def test_no_weight_decay_on_biases_and_norm_layers(optimizer):
    """One step with zero gradients: only weight decay can move a parameter, and it must spare biases and norms."""
    model = create_model("fast", 10, 1, 28)  # Conv2d, BatchNorm2d and Linear layers
    lr, wd = 0.5, 0.2
    opt = create_optimizer(TrainConfig(optimizer=optimizer, lr=lr, weight_decay=wd), model)
    before = copy.deepcopy(model.state_dict())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    spared, decayed = [], []
    for mod_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            key = f"{mod_name}.{name}" if mod_name else name
            if name == "bias" or isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                spared.append(key)
                assert torch.equal(p, before[key]), key
            else:
                decayed.append(key)
                assert not torch.equal(p, before[key]), key
                if optimizer == "adamw":  # decoupled decay: p <- p * (1 - lr * wd), exactly
                    assert torch.allclose(p, before[key] * (1 - lr * wd)), key
    assert any("weight" in k for k in spared) and len(decayed) >= 4  # BatchNorm scales among the spared


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "adam"])
def test_optimizer_is_fused_where_torch_has_the_kernels_and_steps_as_the_loop_does(optimizer):
    """One call for all tensors (engine/optim.py) must compute what torch's per-tensor default computes."""
    torch.manual_seed(0)
    a = create_model("fast", 10, 1, 28)
    b = copy.deepcopy(a)
    cfg = TrainConfig(optimizer=optimizer, lr=0.01, weight_decay=0.05)
    fused = create_optimizer(cfg, a)
    assert fused.defaults.get("fused") is True  # this torch (>= 2.4) has fused kernels for the CPU
    kind = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]
    accepted = set(inspect.signature(kind).parameters) - {"fused", "foreach"}
    plain = kind(param_groups(b, cfg.weight_decay), **{k: v for k, v in fused.defaults.items() if k in accepted})
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for m in (a, b):
            m.zero_grad()
            F.cross_entropy(m(x), torch.arange(8)).backward()
        fused.step()
        plain.step()
    for (k, w), v in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(w, v, rtol=1e-5, atol=1e-6), k  # seen: at most 8e-8 apart


def test_optimizer_falls_back_where_torch_has_no_fused_kernels(monkeypatch):
    real = torch.optim.AdamW

    def no_fused(*args, fused=None, **kw):
        # as torch does for a device without the kernels: fused=True is written into the groups, then refused
        opt = real(*args, fused=fused, **kw)
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return opt

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    opt = create_optimizer(TrainConfig(), create_model("fast", 10, 1, 28))
    assert not opt.defaults.get("fused")
    assert [g["fused"] for g in opt.param_groups] == [None, None]  # what step() reads: the per-tensor loop


# --- schedules --------------------------------------------------------------------------------------------------------
def _lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = create_scheduler(cfg, opt, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_cosine_and_warmup_schedules_per_step():
    step = _lrs(TrainConfig(lr=1.0, epochs=4, scheduler="step", step_size=2, gamma=0.1), 5)
    assert step == pytest.approx([1.0] * 10 + [0.1] * 10)
    cos = _lrs(TrainConfig(lr=1.0, epochs=2, scheduler="cosine"), 4)
    assert cos == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)])
    warm = _lrs(TrainConfig(lr=1.0, epochs=3, scheduler="cosine", warmup_epochs=1), 4)
    assert warm[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warm-up over the first epoch's 4 steps
    assert warm[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)])
    warm_step = _lrs(TrainConfig(lr=1.0, epochs=3, scheduler="step", step_size=1, gamma=0.5, warmup_epochs=0.5), 4)
    assert warm_step == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25])


def test_scheduler_flags_reach_results_csv(tmp_path):
    """The lr column of a real run (the learning rate at each epoch's start), from the command line."""
    base = ["train", "--data", "digits", "--model", "mnist-cnn", "--batch-size", "64", "--subset", "256",
            "--epochs", "3", "--lr", "0.01", "--no-plots", "--no-tensorboard", "--project", str(tmp_path)]
    assert tudui_main(base + ["--scheduler", "step", "--step-size", "1", "--gamma", "0.5", "--name", "step"]) == 0
    assert lr_column(tmp_path / "step") == pytest.approx([0.01, 0.005, 0.0025])
    # 4 steps per epoch; warm-up over epoch 1 starts at 1/4 of the peak; then cosine over the 8 remaining steps.
    assert tudui_main(base + ["--scheduler", "cosine", "--warmup-epochs", "1", "--name", "cos"]) == 0
    assert lr_column(tmp_path / "cos") == pytest.approx([0.0025, 0.01, 0.005])


# --- mixed precision --------------------------------------------------------------------------------------------------
class ConvOutputDtypes(Callback):
    """Records the dtype of the first convolution's output during training steps."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_fit_start(self, run) -> None:
        conv = next(m for m in run.model.modules() if isinstance(m, nn.Conv2d))
        conv.register_forward_hook(lambda m, i, out: self.dtypes.add(out.dtype) if m.training else None)


def test_amp_on_the_cpu_computes_in_bfloat16(tmp_path):
    seen = ConvOutputDtypes()
    r = tudui.train(**SMALL, epochs=1, amp=True, device="cpu", project=str(tmp_path), name="amp", callbacks=[seen])
    assert seen.dtypes == {torch.bfloat16}
    assert math.isfinite(r.history[0]["train_loss"])
    weights = torch.load(r.best, weights_only=True)["model"]
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())  # master weights fp32
    plain = ConvOutputDtypes()
    tudui.train(**SMALL, epochs=1, amp="off", device="cpu", project=str(tmp_path), name="fp32", callbacks=[plain])
    assert plain.dtypes == {torch.float32}


# --- initial weights and frozen backbone ------------------------------------------------------------------------------
class StartState(Callback):
    def on_fit_start(self, run) -> None:
        self.state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        self.trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}


def test_torchvision_state_dict_then_freeze_backbone_trains_only_the_head(tmp_path, capsys):
    import torchvision

    from tudui.data import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(5)
    src = torchvision.models.mobilenet_v3_small(weights=None).state_dict()  # ImageNet-shaped: RGB in, 1000 out
    torch.save(src, tmp_path / "mobilenet_v3_small.pth")
    start = StartState()
    r = tudui.train(data="digits", model="mobilenet_v3_small", weights=str(tmp_path / "mobilenet_v3_small.pth"),
                    img_size=16, freeze_backbone=True, epochs=1, batch_size=64, subset=256, lr=0.01, plots=False,
                    tensorboard=False, project=str(tmp_path), name="frozen", callbacks=[start])
    # what was loaded, skipped and adapted, and the weights' own normalisation (ImageNet's, as one grey channel),
    # said in one line under the first
    tensors = len(create_model("mobilenet_v3_small", 10, 1, 16).state_dict()) - 2  # all but the head's two
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (f"note: weights: {tensors} tensors loaded from {tmp_path / 'mobilenet_v3_small.pth'}, head "
                      "skipped (1000 classes in the file, 10 here; trained anew), first conv adapted 3->1 channels "
                      "(RGB kernels summed); normalised with ImageNet's mean/std (averaged over the channels), as "
                      "the weights were trained")
    assert r.spec.mean == pytest.approx([sum(IMAGENET_MEAN) / 3])
    assert r.spec.std == pytest.approx([sum(IMAGENET_STD) / 3])
    head = "classifier.3"  # the last Linear; classifier.0 (also a Linear) belongs to the backbone here
    assert start.trainable == {f"{head}.weight", f"{head}.bias"}
    final = torch.load(r.last, weights_only=True)["model"]
    params = {n for n, _ in create_model("mobilenet_v3_small", 10, 1, 16).named_parameters()}
    for name in params:
        if name.startswith(head + "."):
            assert final[name].shape[0] == 10 and not torch.equal(final[name], start.state[name]), name
        elif name == "features.0.0.weight":  # the first conv: the file's RGB kernels summed for 1-channel input
            assert torch.allclose(final[name], src[name].sum(1, keepdim=True)), name
        else:
            assert torch.equal(final[name], src[name]), name  # loaded from the file and left untouched


def test_a_one_channel_checkpoint_in_a_three_channel_run_is_adapted_and_said(tiny_model, tmp_path, capsys):
    # The 1x8x8 digits checkpoint as the start of a 3x16x16 run: accepted, and now said, with the checkpoint's own
    # mean/std (not measured anew) and its grey first conv spread over RGB so a grey image gives the same response.
    from tudui.models.surgery import head_path as find_head

    ckpt = torch.load(tiny_model, weights_only=True)
    head_path = find_head(create_model("fast", 10, 1, 8))
    start = StartState()
    r = tudui.train(data="digits", model="fast", weights=str(tiny_model), channels=3, img_size=16, epochs=1,
                    batch_size=64, subset=128, plots=False, tensorboard=False, project=str(tmp_path), name="rgb",
                    callbacks=[start])
    note = capsys.readouterr().out.splitlines()[1]
    head_in = create_model("fast", 10, 3, 16).get_submodule(head_path).in_features
    assert note.startswith(f"note: weights: {len(ckpt['model']) - 2} tensors loaded from {tiny_model}, head skipped "
                           f"({ckpt['model'][head_path + '.weight'].shape[1]} input features in the file, {head_in} "
                           "here; trained anew), first conv adapted 1->3 channels (grey kernels repeated over RGB, "
                           "divided by 3); trained on 1x8x8 input, this run is 3x16x16; normalised with the "
                           "checkpoint's mean/std (repeated for each channel)"), note
    assert r.spec.mean == ckpt["data"]["mean"] * 3 and r.spec.std == ckpt["data"]["std"] * 3
    conv = next(k for k, v in ckpt["model"].items() if v.dim() == 4)
    grey = torch.rand(1, 1, 8, 8)
    assert torch.allclose(F.conv2d(grey.repeat(1, 3, 1, 1), start.state[conv].cpu()),
                          F.conv2d(grey, ckpt["model"][conv]), atol=1e-5)


def test_freeze_backbone_without_weights_is_an_error_with_the_way_out(tmp_path, capsys):
    # it used to freeze a random backbone and train a head on its noise (19.8% on Fashion-MNIST)
    assert tudui_main(["train", "--data", "digits", "--model", "fast", "--freeze-backbone", "--project",
                       str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --freeze-backbone without --weights") and \
        "--weights DEFAULT" in err and "drop --freeze-backbone" in err, err
    assert list(tmp_path.iterdir()) == []
    # an nn.Module given built (library) carries whatever weights its owner loaded: allowed
    TrainConfig(model=create_model("fast", 10, 1, 8), freeze_backbone=True)


def test_unused_workers_and_val_split_are_said(fmnist, tmp_path, capsys):
    from tests.conftest import write_class_folders

    train, test = fmnist
    write_class_folders(tmp_path / "d" / "train", train, 4)
    write_class_folders(tmp_path / "d" / "val", test, 2)
    assert tudui_main(["train", "--data", str(tmp_path / "d"), "--model", "fast-mlp", "--epochs", "1",
                       "--batch-size", "8", "--val-split", "0.2", "--workers", "2", "--no-tensorboard", "--no-plots",
                       "--project", str(tmp_path / "runs")]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert notes == [
        f"note: --val-split 0.2 not used: the data has its own validation split (20 images in "
        f"{tmp_path / 'd' / 'val'}), which is validated on; move those images into train/ to hold out a share instead",
        "note: --workers 2 not used: every split is held decoded in memory (or memory-mapped), so batches need no "
        "decoding; workers decode image files read every epoch (--cache off)"]


# --- augmentation -----------------------------------------------------------------------------------------------------
def _explain(out: torch.Tensor, x: torch.Tensor, pad: int, prepare) -> set[str]:
    """Which of identity / mirror / shift / shift+mirror (zero fill) turns each image of x into out."""
    kinds = set()
    size = x.shape[-1]
    for i in range(len(x)):
        found = None
        for flip in (False, True):
            src = x[i].flip(-1) if flip else x[i]
            for dy in range(-pad, pad + 1):
                for dx in range(-pad, pad + 1):
                    cand = torch.zeros_like(src)
                    cand[:, max(0, dy):size + min(0, dy), max(0, dx):size + min(0, dx)] = \
                        src[:, max(0, -dy):size + min(0, -dy), max(0, -dx):size + min(0, -dx)]
                    if torch.allclose(prepare(cand[None])[0], out[i]):
                        found = found or ("shift" if (dy, dx) != (0, 0) else "identity") + ("+mirror" if flip else "")
        assert found, f"image {i} is no flip/translation of its source"
        kinds.add(found.replace("identity+mirror", "mirror"))
    return kinds


@pytest.mark.parametrize("augment, allowed", [
    ("none", {"identity"}),
    ("flip", {"identity", "mirror"}),
    ("crop", {"identity", "shift"}),
    ("crop-flip", {"identity", "mirror", "shift", "shift+mirror"}),
])
def test_augment_modes_reach_the_training_batches(tmp_path, augment, allowed):
    # --hflip: digits forbid flips by default, which would make flip and crop-flip look like none and crop.
    run = setup(TrainConfig(**SMALL, augment=augment, hflip=True, channels_last=False, project=str(tmp_path),
                            name=augment))
    x = torch.randint(1, 256, (256, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = run.prepare(x, train=True)
    kinds = _explain(out, x, run.spec.pad, lambda b: run.prepare(b, train=False))
    assert kinds <= allowed and len(kinds) == len(allowed)  # every allowed kind occurs among 256 images, nothing else


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 10, 20, 21, 40])
def test_onecycle_runs_for_any_number_of_steps(steps):
    """A 5% warm-up of a 20-step run is one step, which OneCycleLR cannot divide by: the schedule must still run."""
    from tudui.core.config import TrainConfig
    from tudui.engine.optim import create_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = create_scheduler(TrainConfig(epochs=1), opt, steps)
    for _ in range(steps):
        opt.step()
        sched.step()
    assert all(math.isfinite(g["lr"]) for g in opt.param_groups)


@pytest.mark.parametrize("epochs, steps, warmup", [(1, 1, 0.0), (1, 3, 0.0), (2, 4, 0.0), (3, 7, 0.0), (10, 40, 0.0),
                                                   (4, 10, 1.0), (2, 4, 3.0)])
def test_the_onecycle_curve_is_torchs_step_for_step(epochs, steps, warmup):
    """lr_curve, which builds the --fine-tune phases' rates, gives the rates torch's OneCycleLR gives a plain run."""
    from tudui.engine.optim import lr_curve

    cfg = TrainConfig(lr=1.0, epochs=epochs, scheduler="onecycle", warmup_epochs=warmup)
    curve = lr_curve(cfg, epochs, steps)
    assert [curve(s) for s in range(epochs * steps)] == pytest.approx(_lrs(cfg, steps), rel=1e-9, abs=1e-12)


def _run_schedule(sched_of, lr: float, momentum: float, total: int) -> tuple[list[float], list[float]]:
    """(learning rate, momentum) before each of `total` optimisation steps of the scheduler `sched_of(optimizer)`."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=momentum)
    sched = sched_of(opt)
    lrs, moms = [], []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    return lrs, moms


@pytest.mark.parametrize("epochs, steps, warmup_epochs, pct_start", [
    (3, 100, 0.0, 0.05),  # the default: 5% of the steps warm up
    (10, 37, 0.0, 0.05),  # a warm-up that ends between two steps (18.5 steps)
    (4, 75, 1.0, 0.25),  # --warmup-epochs 1 of 4: a quarter of the run
])
def test_the_default_schedule_is_torchs_one_cycle_with_linear_annealing(epochs, steps, warmup_epochs, pct_start):
    """The default schedule against torch's OneCycleLR configured independently (the constants are written out
    here, not read from tudui): warm-up from lr/25 over the first `pct_start` of the steps, then down to lr/25/1e4,
    every rate equal to 1e-9 over a whole run of a few hundred steps; the momentum is not cycled."""
    cfg = TrainConfig(lr=0.1, epochs=epochs, warmup_epochs=warmup_epochs)
    assert cfg.scheduler == "onecycle"  # what a run gets without --scheduler
    total = epochs * steps
    ours, our_momentum = _run_schedule(lambda opt: create_scheduler(cfg, opt, steps), cfg.lr, cfg.momentum, total)

    def reference(opt, anneal: str = "linear"):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total, pct_start=pct_start,
                                                   div_factor=25.0, final_div_factor=1e4, anneal_strategy=anneal,
                                                   cycle_momentum=False)

    want, _ = _run_schedule(reference, 0.1, cfg.momentum, total)
    assert ours == pytest.approx(want, rel=1e-9, abs=0)
    # From lr/25 to the peak (exactly, or within a step of it when the warm-up ends between two steps).
    assert ours[0] == pytest.approx(0.1 / 25) and max(ours) == pytest.approx(0.1, rel=2e-3) and max(ours) <= 0.1
    # The --fine-tune phases' curve (lr_curve, a formula) gives the same rates.
    curve = lr_curve(cfg, epochs, steps)
    assert [cfg.lr * curve(s) for s in range(total)] == pytest.approx(want, rel=1e-9, abs=1e-15)
    # Two deliberate differences from OneCycleLR's defaults, pinned: the rate falls linearly, not along torch's
    # default cosine (the linear decay trained better in tudui's short CPU runs: benchmarks/README.md), and the
    # momentum stays --momentum (torch cycles it between 0.85 and 0.95 by default; Adam's beta1 would cycle too).
    cosine, _ = _run_schedule(lambda opt: reference(opt, "cos"), 0.1, cfg.momentum, total)
    assert ours != pytest.approx(cosine, rel=1e-3)
    assert set(our_momentum) == {cfg.momentum}


# --- one table per switch ---------------------------------------------------------------------------------------------
def test_the_config_choices_and_the_builders_read_the_same_tables():
    import dataclasses

    from tudui.core import modes
    from tudui.engine import optim

    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(TrainConfig)}
    assert set(optim.LOSSES) == set(modes.LOSSES) and choices["loss"] == list(modes.LOSSES)
    assert set(optim.OPTIMIZERS) == set(modes.OPTIMIZERS) and choices["optimizer"] == list(modes.OPTIMIZERS)
    assert choices["scheduler"] == list(modes.SCHEDULERS) and choices["augment"] == ["auto", *modes.AUGMENTS]
    model = create_model("fast", 10, 1, 28)
    for name in modes.LOSSES:  # each loss for the data it is for: single-label, or multi-label (engine/multilabel)
        multi = name not in ("cross-entropy", "nll", "mse", "l1")
        assert isinstance(create_loss(TrainConfig(loss=name), [1] * 10, torch.device("cpu"), multi), nn.Module)
    assert set(optim.MULTI_LABEL_LOSSES) <= set(modes.LOSSES)
    for name in modes.OPTIMIZERS:
        assert isinstance(create_optimizer(TrainConfig(optimizer=name), model), torch.optim.Optimizer)
    for name in modes.SCHEDULERS:
        assert len(_lrs(TrainConfig(scheduler=name, epochs=2), 3)) == 6


def test_every_augment_mode_does_what_its_row_says(tmp_path):
    """Each row of core/modes.AUGMENTS through the training batches: a mode that is not random leaves the images as
    evaluation sees them; one that is changes some; the first line's 'flips would change' name is the row's own."""
    from tudui.core.modes import AUGMENTS
    from tudui.data.transforms import augment_options

    run = setup(TrainConfig(**SMALL, hflip=True, channels_last=False, project=str(tmp_path), name="modes"))
    x = torch.randint(1, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plain = run.prepare(x, train=False)
    for name, mode in AUGMENTS.items():
        run.data.augment = name
        out = run.prepare(x, train=True)
        assert out.shape == plain.shape, name
        assert torch.equal(out, plain) != mode.is_random(hflip=True), name
        pad, flip = augment_options(name, run.spec)
        assert (pad > 0, flip) == (mode.crop, mode.flip), name
    assert {n: m.without_flip() for n, m in AUGMENTS.items() if m.without_flip()} == {"flip": "none",
                                                                                       "crop-flip": "crop"}


# --- flags that reach the objects that use them --------------------------------------------------------------------
def setup_from_cli(tmp_path, monkeypatch, *flags: str):
    """`tudui train --data digits ... FLAGS` as the CLI parses it into a TrainConfig, set up but not trained: the
    Run whose optimizer, EMA, augmentation and mixer training would use."""
    import tudui.api

    runs = []

    def set_up_only(cfg, callbacks=None):
        runs.append(setup(cfg))
        runs[-1].close()

    monkeypatch.setattr(tudui.api, "fit", set_up_only)
    argv = ["train", "--data", "digits", "--model", "mnist-cnn", "--subset", "256", "--batch-size", "64",
            "--no-plots", "--no-tensorboard", "--project", str(tmp_path), *flags]
    assert tudui_main(argv) == 0
    return runs[0]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_momentum_reaches_the_optimizer(tmp_path, monkeypatch, optimizer):
    """--momentum is SGD's (Nesterov) momentum and Adam/AdamW's beta1, in every parameter group."""
    run = setup_from_cli(tmp_path, monkeypatch, "--optimizer", optimizer, "--momentum", "0.73")
    groups = run.optimizer.param_groups
    assert type(run.optimizer).__name__.lower() == optimizer and len(groups) == 2
    for g in groups:
        if optimizer == "sgd":
            assert g["momentum"] == 0.73 and g["nesterov"] is True
        else:
            assert g["betas"] == (0.73, 0.999)


def test_augment_ema_and_mix_flags_reach_the_objects_that_use_them(tmp_path, monkeypatch):
    """--crop-scale, --rotate and --color-jitter reach the photo augmentation of every training batch, --ema-decay
    the EMA, --mix-prob the mixer: parsed by the CLI, carried by the TrainConfig, received by the code."""
    import tudui.engine.run as run_module

    run = setup_from_cli(tmp_path, monkeypatch, "--augment", "photo", "--crop-scale", "0.3", "0.9", "--rotate", "12",
                         "--color-jitter", "0.2", "--ema", "--ema-decay", "0.95", "--mixup", "0.2", "--mix-prob",
                         "0.4")
    assert run.ema is not None and run.ema.decay == 0.95
    seen = {}

    def spy(name, fn):
        def called(*args, **kwargs):
            seen[name] = inspect.signature(fn).bind(*args, **kwargs).arguments
            return fn(*args, **kwargs)
        monkeypatch.setattr(run_module, name, called)

    spy("resized_crop_batch", run_module.resized_crop_batch)
    spy("mix_batch", run_module.mix_batch)
    x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    run.mix(run.prepare(x, train=True), torch.arange(8) % 10)
    crop = seen["resized_crop_batch"]
    assert tuple(crop["scale"]) == (0.3, 0.9) and crop["rotate"] == 12 and crop["jitter"] == 0.2
    assert seen["mix_batch"]["prob"] == 0.4 and seen["mix_batch"]["mixup"] == 0.2


def test_nll_loss_trains_as_cross_entropy_does(tmp_path):
    """--loss nll (log-softmax + NLLLoss) is cross-entropy: the same criterion values (hard targets, class weights,
    mixup's soft targets) and, from the same seed, the same weights after training (--label-smoothing 0: smoothing
    is cross-entropy's own option)."""
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)
    soft = torch.softmax(torch.randn(16, 5, generator=g), 1)
    counts = [1, 3, 5, 2, 9]
    for weights in ("none", "auto"):
        cfg = TrainConfig(loss="nll", label_smoothing=0.0, class_weights=weights)
        nll = create_loss(cfg, counts, torch.device("cpu"))
        ce = create_loss(TrainConfig(label_smoothing=0.0, class_weights=weights), counts, torch.device("cpu"))
        assert isinstance(ce, nn.CrossEntropyLoss)
        for target in (y, soft):
            assert torch.allclose(nll(logits, target), ce(logits, target), rtol=1e-6, atol=0), (weights, target.dtype)
    two_steps = SMALL | dict(subset=128, label_smoothing=0.0, project=str(tmp_path))
    (a, loss_a), (b, loss_b) = (train_an_epoch(TrainConfig(**two_steps, loss=loss, name=loss))
                                for loss in ("cross-entropy", "nll"))
    assert loss_a == pytest.approx(loss_b, rel=1e-6) and any(not torch.equal(a[k], TRAINED_FROM[k]) for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7), k


TRAINED_FROM = {}  # the initial weights of the last run train_an_epoch set up


def train_an_epoch(cfg: TrainConfig) -> tuple[dict, float]:
    """(the weights, the mean training loss) after one epoch of `cfg`'s run: the loop's own epoch, without the
    validation, checkpoints and final evaluation that tudui.train adds."""
    from tudui.engine.trainer import train_one_epoch

    run = setup(cfg)
    try:
        TRAINED_FROM.clear()
        TRAINED_FROM.update({k: v.clone() for k, v in run.model.state_dict().items()})
        loss = train_one_epoch(run, 0)["train_loss"]
    finally:
        run.close()
    return {k: v.detach().clone() for k, v in run.model.state_dict().items()}, loss
