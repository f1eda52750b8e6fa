"""Frozen backbones and the fine-tuning schedule (`--freeze-backbone`, `--fine-tune N --backbone-lr-mult M`).

The head is the model's last nn.Linear (models/surgery.py `head_path`); everything before it is the backbone.

Frozen: the backbone's parameters take no gradient and the backbone runs in eval mode, so BatchNorm keeps the
pretrained statistics (and dropout before the head is off): its output for a given image never changes, which is
what lets engine/features.py compute it once per augmented view.

`--fine-tune N` (fastai's `fine_tune`, in one run and one results.csv): epochs 1..N train the head alone (from
cached features), then the backbone is unfrozen and the rest of `--epochs` trains everything with discriminative
rates: the backbone at lr x backbone_lr_mult, the head at lr. The optimiser holds every parameter from the start
(frozen ones get no gradient, so it skips them) and one LambdaLR drives both phases, each group with its own
curve: the head one schedule over phase 1 and a fresh one over phase 2, the backbone zero in phase 1 and the phase-2
curve after. Being one scheduler, `--resume` and `--time` handle it as they handle any other.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..models.surgery import head_path


def frozen_phase(cfg, epoch: int) -> bool:
    """Whether epoch `epoch` (0-based) trains the head alone."""
    return bool(cfg.freeze_backbone or (cfg.fine_tune and epoch < cfg.fine_tune))


def set_trainable(model: nn.Module, head: str, backbone: bool) -> None:
    """Gradients for the head always, for the backbone only when `backbone`."""
    for name, p in model.named_parameters():
        p.requires_grad = backbone or name.startswith(head + ".")


def set_frozen_modes(model: nn.Module, head: str) -> None:
    """Everything but the head in eval mode (BatchNorm statistics kept, dropout off); the head in train mode."""
    model.eval()
    model.get_submodule(head).train()


def begin_epoch(run, epoch: int) -> None:
    """Before epoch `epoch`: freeze or unfreeze the backbone as the schedule says (a resumed run too)."""
    cfg = run.cfg
    if not (cfg.freeze_backbone or cfg.fine_tune):
        return
    head = head_path(run.model)
    frozen = frozen_phase(cfg, epoch)
    was_frozen = not all(p.requires_grad for p in run.model.parameters())
    set_trainable(run.model, head, backbone=not frozen)
    if was_frozen and not frozen and run.world.rank == 0:
        lrs = ", ".join(f"{g['lr']:.3g}" for g in run.optimizer.param_groups if g.get("backbone"))
        print(f"epoch {epoch + 1}: backbone unfrozen (learning rate {lrs}, x{cfg.backbone_lr_mult:g} of the head's); "
              "from here on every step trains the whole model", flush=True)


def finetune_groups(model: nn.Module, weight_decay: float, lr: float, backbone_lr_mult: float) -> list[dict]:
    """Four optimiser groups: head and backbone, each with decayed weights and undecayed biases/norm scales.

    Every parameter is included (frozen ones too): the backbone's groups wait at their own rate until unfrozen.
    """
    head = head_path(model)
    groups = []
    for is_head in (True, False):
        params = [(n, p) for n, p in model.named_parameters() if n.startswith(head + ".") == is_head]
        rate = lr if is_head else lr * backbone_lr_mult
        for decay in (True, False):
            chosen = [p for _, p in params if (p.ndim > 1) == decay]
            groups.append({"params": chosen, "weight_decay": weight_decay if decay else 0.0, "lr": rate,
                           "backbone": not is_head})
    return groups


def _shape(kind: str, step: int, total: int, warmup: int, steps_per_epoch: int, cfg) -> float:
    """The learning-rate factor `step` steps into a phase of `total` steps (the chosen --scheduler's curve)."""
    if kind == "onecycle":
        # torch's OneCycleLR with pct_start 0.15, linear annealing, div_factor 25, final_div_factor 1e4
        up = max(1.0, 0.15 * total - 1)
        lo, floor = 1 / 25, 1 / 25 / 1e4
        if step <= up:
            return lo + (1 - lo) * step / up
        return 1 + (floor - 1) * min(1.0, (step - up) / max(1.0, total - 1 - up))
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // max(1, cfg.step_size))
    if kind == "cosine":
        t = min(1.0, (step - warmup) / max(1.0, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def finetune_scheduler(cfg, optimizer: torch.optim.Optimizer,
                       steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """One LambdaLR for both phases: per group, the --scheduler curve over the head phase, then a fresh curve over
    the rest (the backbone's groups stay at zero during the head phase)."""
    first = cfg.fine_tune * steps_per_epoch
    rest = max(1, (cfg.epochs - cfg.fine_tune) * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def head(step: int) -> float:
        if step < first:
            return _shape(cfg.scheduler, step, first, warmup, steps_per_epoch, cfg)
        return _shape(cfg.scheduler, step - first, rest, warmup, steps_per_epoch, cfg)

    def backbone(step: int) -> float:
        return 0.0 if step < first else _shape(cfg.scheduler, step - first, rest, warmup, steps_per_epoch, cfg)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [backbone if g.get("backbone") else head
                                                         for g in optimizer.param_groups])
