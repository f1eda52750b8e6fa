"""Frozen backbones and the fine-tuning schedule (`--freeze-backbone`, `--fine-tune N --backbone-lr-mult M`).

The head is the model's last nn.Linear (models/surgery.py `head_path`); everything before it is the backbone.

Frozen: the backbone's parameters take no gradient and the backbone runs in eval mode, so BatchNorm keeps the
pretrained statistics (and dropout before the head is off): its output for a given image never changes, which is
what lets engine/features.py compute it once per augmented view.

`--fine-tune N` (fastai's `fine_tune`, in one run and one results.csv): epochs 1..N train the head alone (from
cached features), then the backbone is unfrozen and the rest of `--epochs` trains everything with discriminative
rates: the backbone at lr x backbone_lr_mult, the head at lr. The optimiser holds every parameter from the start
(frozen ones get no gradient, so it skips them) and one LambdaLR drives both phases (engine/optim.py
`create_scheduler`): each phase has the learning rates of a plain run of its length.
"""
from __future__ import annotations

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
