"""Factories for the loss, optimizer and learning-rate schedule, looked up by name.

The names (and their --help texts) are core/modes.py's LOSSES, OPTIMIZERS and SCHEDULERS; the builders are the
tables below, keyed by the same names (tests/engine/test_options.py checks they match). A new loss: its row in
core/modes.LOSSES and its builder in LOSSES here.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import TuduiError
from .choices import resolve_smoothing
from .finetune import finetune_groups
from .multilabel import AsymmetricLoss, MultiHotBCE


def _as_probabilities(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(B,) class indices -> one-hot (B, K); (B, K) soft targets (mixup/cutmix) as they are."""
    if targets.is_floating_point():
        return targets.to(logits.dtype)
    return F.one_hot(targets, logits.shape[1]).to(logits.dtype)


class OneHotRegression(nn.Module):
    """The course's L1/MSE losses (`fn`: F.l1_loss, F.mse_loss) applied to softmax probabilities against one-hot
    (or soft) targets."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.fn(logits.softmax(1), _as_probabilities(targets, logits))


class NLL(nn.Module):
    """log_softmax + NLLLoss (numerically the same as cross-entropy)."""

    def __init__(self, weight: torch.Tensor | None) -> None:
        super().__init__()
        self.loss = nn.NLLLoss(weight=weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, 1)
        if not targets.is_floating_point():
            return self.loss(logp, targets)
        w = self.loss.weight if self.loss.weight is not None else torch.ones(logits.shape[1], device=logits.device)
        return -(targets * w * logp).sum(1).mean()  # soft targets (mixup/cutmix)


def class_weights(counts, device) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over the classes present."""
    c = torch.as_tensor(counts, dtype=torch.float32)
    w = torch.where(c > 0, c.sum() / (len(c) * c.clamp_min(1)), torch.zeros_like(c))
    return (w / w[c > 0].mean()).to(device)


# --loss name -> builder(cfg, class weights (K,) or None); names and help: core/modes.LOSSES
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "cross-entropy": lambda cfg, weight: nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing),
    "nll": lambda cfg, weight: NLL(weight),
    "mse": lambda cfg, weight: OneHotRegression(F.mse_loss),
    "l1": lambda cfg, weight: OneHotRegression(F.l1_loss),
    "asl": lambda cfg, weight: AsymmetricLoss(smoothing=cfg.label_smoothing),
}
# a multi-label model's losses (a sigmoid per class): cross-entropy is its binary form (BCEWithLogits)
MULTI_LABEL_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "cross-entropy": lambda cfg: MultiHotBCE(cfg.label_smoothing),
    "asl": lambda cfg: AsymmetricLoss(smoothing=cfg.label_smoothing),
}


class SmoothedCrossEntropy(nn.Module):
    """Cross-entropy against (B,) classes or (B, K) soft targets (mixup/cutmix) with label smoothing `smoothing`
    spread over the classes as `smooth_to` (K,) (even when None), each image weighted by its class's `weight`
    (K,) (a soft target: the mean of its classes' weights) and the loss their weighted mean.

    torch's CrossEntropyLoss(weight=, label_smoothing=) weighs each class's smoothing term by that class's weight,
    so with inverse-frequency weights every image asks for a rare class's probability up to 100x more than for a
    common one's: on ratio-100 Fashion-MNIST, --balance loss lost 5 points of balanced accuracy to the same run
    without smoothing (benchmarks/README.md). Here the weight multiplies an image's whole smoothed loss, which is
    what weighting the classes means. Under --balance logit-adjust, `smooth_to` is priors_tau's."""

    def __init__(self, smoothing: float, weight: torch.Tensor | None = None,
                 smooth_to: torch.Tensor | None = None) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.register_buffer("weight", weight)
        self.register_buffer("smooth_to", smooth_to)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), 1)  # (B, K)
        hot = _as_probabilities(targets, logp)  # (B, K) float32
        spread = self.smooth_to if self.smooth_to is not None else torch.full_like(hot[0], 1 / logp.shape[1])  # (K,)
        smoothed = (1 - self.smoothing) * hot + self.smoothing * spread
        per_image = -(smoothed * logp).sum(1)  # (B,)
        if self.weight is None:
            return per_image.mean()
        w = (hot * self.weight).sum(1)  # (B,); not a matmul, which autocast would run in bf16
        return (per_image * w).sum() / w.sum()


class LogitAdjusted(nn.Module):
    """--balance logit-adjust: `loss(logits + tau * log(priors), targets)` in training (Menon et al. 2021, the
    logit-adjusted loss). The adjustment raises the common classes' logits by what their frequency alone explains, so
    the model's own logits learn the rest and are not biased to the common classes; predictions use the logits as
    they are (validation, eval, predict and exports never see the adjustment). For label smoothing under it, see
    priors_tau."""

    def __init__(self, loss: nn.Module, counts, tau: float, device) -> None:
        super().__init__()
        self.loss = loss
        self.register_buffer("adjustment", (tau * log_priors(counts)).to(torch.float32).to(device))  # (K,)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits + self.adjustment.to(logits.dtype), targets)


def log_priors(counts) -> torch.Tensor:
    """(K,) float64 log of each class's share of the training images (a class with none: as one image)."""
    c = torch.as_tensor(counts, dtype=torch.float64).clamp_min(1)
    return torch.log(c / c.sum())


def priors_tau(counts, tau: float) -> torch.Tensor:
    """(K,) float32 priors^tau, normalised: where label smoothing under logit adjustment spreads its share. Spread
    evenly over the adjusted logits, smoothing asks the model's own softmax for a floor of eps/K / prior^tau on
    each class, which raises a class 100x rarer than the largest on every image: at tau 1 on ratio-100
    Fashion-MNIST that cost 6 points of balanced accuracy (benchmarks/README.md). Spread as priors^tau, it is even
    over the model's own softmax at the optimum (every class but the target gets the same share)."""
    return torch.softmax(tau * log_priors(counts), 0).to(torch.float32)


def create_loss(cfg, counts, device, multi_label: bool = False) -> nn.Module:
    """The training criterion of --loss (TrainConfig `cfg`, its label smoothing already range-checked): with
    inverse-frequency class weights from the training set's per-class `counts` under --balance loss (or
    --class-weights auto), on logits adjusted by the log class priors under --balance logit-adjust; for a
    multi-label model (`multi_label`), binary cross-entropy per class or the asymmetric loss. Cross-entropy with
    label smoothing and either remedy is SmoothedCrossEntropy (torch's smoothing would favour the rare classes)."""
    resolve_smoothing(cfg, multi_label)  # a no-op after setup settled it
    if multi_label:
        if cfg.loss not in MULTI_LABEL_LOSSES:
            raise TuduiError(f"--loss {cfg.loss} is a single-label loss and this data is multi-label; use "
                             f"--loss {' or '.join(MULTI_LABEL_LOSSES)}")
        if cfg.class_weights == "auto":
            raise TuduiError("--class-weights auto weighs the classes of single-label data; for multi-label data "
                             "drop it (--loss asl down-weights the many absent classes)")
        return MULTI_LABEL_LOSSES[cfg.loss](cfg)
    if cfg.loss not in ("cross-entropy", "nll", "mse", "l1"):
        raise TuduiError(f"--loss {cfg.loss} is for multi-label data (several classes per image) and this data has "
                         "one class per image; use --loss cross-entropy")
    balance = getattr(cfg, "balance", "none")
    weight = class_weights(counts, device) if cfg.class_weights == "auto" or balance == "loss" else None
    adjust = balance == "logit-adjust"
    if cfg.loss == "cross-entropy" and cfg.label_smoothing and (weight is not None or adjust):
        loss = SmoothedCrossEntropy(cfg.label_smoothing, weight,
                                    priors_tau(counts, cfg.logit_tau).to(device) if adjust else None)
    else:
        loss = LOSSES[cfg.loss](cfg, weight)
    return LogitAdjusted(loss, counts, cfg.logit_tau, device) if adjust else loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights of Conv/Linear only: biases and norm scales (1-D) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --optimizer name -> builder(param groups, cfg, **fused); names and help: core/modes.OPTIMIZERS
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups, cfg, **kw: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                                     nesterov=cfg.momentum > 0, **kw),
    "adam": lambda groups, cfg, **kw: torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), **kw),
    "adamw": lambda groups, cfg, **kw: torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), **kw),
}


def create_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The --optimizer for `model`'s trainable parameters at the peak rate `cfg.lr` (a TrainConfig: its range was
    checked when it was built; `--lr auto` must have been resolved to a number first).

    Weight decay spares biases and norm scales (`param_groups`); with --fine-tune the head and the backbone get
    groups of their own, the backbone at lr x --backbone-lr-mult. Fused kernels (one call per group) where this
    torch has them for the device, else torch's per-tensor loop; benchmarks/README.md has the timings.
    """
    if not isinstance(cfg.lr, (int, float)):
        raise TuduiError(f"--lr {cfg.lr}: resolve it (tudui lr-find) before building the optimizer")
    if getattr(cfg, "fine_tune", 0):  # head and backbone groups, the backbone at lr x --backbone-lr-mult
        groups = finetune_groups(model, cfg.weight_decay, cfg.lr, cfg.backbone_lr_mult)
    else:
        groups = param_groups(model, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise TuduiError("the model has no trainable parameters (is everything frozen?)")
    # The fused kernels update all of a group's tensors in one call; torch's default on the CPU is a Python loop of
    # about ten operations per tensor, and on a GPU each operation is a kernel launch (what bounds small models'
    # steps there).
    build = OPTIMIZERS[cfg.optimizer]
    try:
        # copies: torch writes its defaults (fused=True among them) into the group dicts before it refuses them
        return build([dict(g) for g in groups], cfg, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernels for this device in this torch
        return build(groups, cfg)


def continue_schedule(scheduler, step: int) -> None:
    """Move a schedule built for a new length to optimisation step `step` (a resumed run with more --epochs, or
    --time planning the epochs after the first): the learning rate jumps to where the new schedule is."""
    scheduler.last_epoch = step - 1
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()


ONECYCLE_WARMUP = 0.05  # fraction of a one-cycle schedule spent warming up when --warmup-epochs is 0
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4  # one-cycle starts at lr / 25 and ends at lr / 25 / 1e4 (torch's defaults)


def onecycle_warmup(cfg, epochs: int, total: int) -> float:
    """The fraction of a one-cycle curve of `epochs` epochs (`total` steps) spent warming up."""
    # Linear warm-up from lr/25 (over --warmup-epochs, else the first 5% of steps), then linear decay to ~0: the best
    # of the schedules tried for short CPU budgets. 5% rather than 15%: the first epoch ends nearer the peak and up to
    # ~1 point more accurate (val top-1 after epoch 1, 2 seeds, benchmarks/README.md), same final accuracy.
    pct = min(0.5, cfg.warmup_epochs / epochs) if cfg.warmup_epochs > 0 and epochs > 0 else ONECYCLE_WARMUP
    # OneCycleLR divides by (warm-up steps - 1): a warm-up of exactly one step raises ZeroDivisionError. At least
    # 2 steps (at most 30% of a very short run, where pct x total stays below 1 and the warm-up is skipped).
    if pct * total < 2:
        pct = min(2 / total, 0.3)
    return pct


def lr_curve(cfg, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The --scheduler's learning-rate factor (x --lr) `step` optimisation steps into a run of `epochs` epochs.

    Every schedule is this curve: a plain run's over its --epochs, each `--fine-tune` phase's over the phase's
    epochs (so each phase has the rates of a plain run of its length, --warmup-epochs included). A plain one-cycle
    run is stepped by torch's OneCycleLR (its state is what checkpoints hold); the one-cycle branch below is that
    schedule's formula, step for step (tests/engine/test_options.py compares them).
    """
    total = max(1, epochs * steps_per_epoch)
    if cfg.scheduler == "onecycle":
        # torch's OneCycleLR, linear annealing: lr/25 -> lr over steps [0, up], then lr -> lr/25/1e4 over [up, total-1]
        up = onecycle_warmup(cfg, epochs, total) * total - 1
        lo = 1 / ONECYCLE_DIV
        floor = lo / ONECYCLE_FINAL_DIV

        def onecycle(step: int) -> float:
            if step <= up:
                return lo + (1 - lo) * step / up
            return 1 + (floor - 1) * min(1.0, (step - up) / (total - 1 - up))  # held at the floor past the end

        return onecycle
    warmup = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // max(1, cfg.step_size))
        if cfg.scheduler == "cosine":
            t = min(1.0, (step - warmup) / max(1.0, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return factor


def warms_up(cfg, steps_per_epoch: int) -> bool:
    """Whether the run's schedule starts below --lr and rises (one-cycle, --warmup-epochs): its first rate is then
    the warm-up's start, not the rate asked for (a one-cycle run of one or two steps may start in its decay)."""
    curve = lr_curve(cfg, cfg.epochs, steps_per_epoch)
    return curve(1) > curve(0)


def create_scheduler(cfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step schedule (scheduler.step() after every optimizer step); steps_per_epoch counts optimiser steps."""
    if getattr(cfg, "fine_tune", 0):  # two phases, a curve each
        return _finetune_scheduler(cfg, optimizer, steps_per_epoch)
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=onecycle_warmup(cfg, cfg.epochs, total),
            anneal_strategy="linear", cycle_momentum=False, div_factor=ONECYCLE_DIV, final_div_factor=ONECYCLE_FINAL_DIV)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_curve(cfg, cfg.epochs, steps_per_epoch))


def _finetune_scheduler(cfg, optimizer: torch.optim.Optimizer,
                        steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """`--fine-tune N`: one LambdaLR for both phases (engine/finetune.py): per group, the --scheduler curve of an
    N-epoch run over the head phase, then a fresh curve of an (--epochs - N)-epoch run over the rest; the backbone's
    groups stay at zero during the head phase. Being one scheduler, --resume and --time handle it as any other."""
    first = cfg.fine_tune * steps_per_epoch
    head_phase = lr_curve(cfg, cfg.fine_tune, steps_per_epoch)
    rest = lr_curve(cfg, cfg.epochs - cfg.fine_tune, steps_per_epoch)

    def head(step: int) -> float:
        return head_phase(step) if step < first else rest(step - first)

    def backbone(step: int) -> float:
        return 0.0 if step < first else rest(step - first)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [backbone if g.get("backbone") else head
                                                         for g in optimizer.param_groups])
