"""What a person sees: console progress and tables, TensorBoard event files, PNG pictures."""
from __future__ import annotations


def default_callbacks(cfg) -> list:
    """The reporting callbacks a TrainConfig asks for (--tensorboard, --plots); imported only when wanted."""
    callbacks = []
    if getattr(cfg, "tensorboard", False):
        from .tensorboard import TensorBoardCallback

        callbacks.append(TensorBoardCallback(log_every=cfg.log_every))
    if getattr(cfg, "plots", False):
        from .plots import PlotsCallback

        callbacks.append(PlotsCallback())
    return callbacks
