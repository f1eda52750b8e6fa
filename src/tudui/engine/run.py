"""What a training run holds (`Run`: set up by engine/setup.py, trained by engine/trainer.py, read by every
callback and checkpoint) and what it returns (`RunResult`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..core.checkpoint import make_checkpoint
from ..core.config import TrainConfig
from ..core.device import World
from ..core.lock import FileLock
from ..core.modes import AUGMENTS
from ..data import DataBundle, DataSpec, augment_batch, augment_options, normalize
from ..data.augment import center_crop_batch, erase_batch, mix_batch, policy_batch, resized_crop_batch
from .callbacks import Callback
from .ema import ModelEMA
from .resume import resume_state


@dataclass
class RunResult:
    run_dir: Path
    best: Path
    last: Path
    history: list[dict]  # results.csv rows
    val: dict | None  # best checkpoint on the validation split (metrics.compute_metrics)
    test: dict | None  # best checkpoint on the test split, when the data has one
    spec: DataSpec
    # the most confidently wrong images of the split the pictures use (val, else test), from the same final pass
    # (this process's share under torchrun): [(probability, (H, W, C) uint8, true, predicted)]
    mistakes: list | None = None


@dataclass
class Run:
    """Everything a training run holds; callbacks and checkpoints read it."""

    cfg: TrainConfig
    device: torch.device
    data: DataBundle
    model: nn.Module
    arch: dict
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    train_loader: object
    val_loader: object | None
    run_dir: Path
    aug_generator: torch.Generator
    callbacks: list[Callback] = field(default_factory=list)
    ddp: nn.Module | None = None  # DDP wrapper of `model` under torchrun: training goes through it
    ema: ModelEMA | None = None  # --ema: the averaged weights, validated and saved as best.pt
    train_module: nn.Module | None = None  # what the loop calls: ddp or model, torch.compile'd with --compile
    # (x, y) -> loss, gradients in .grad: step.EagerStep or, with --cuda-graph, cuda_graph.GraphedStep (chosen in set-up)
    train_step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    world: World = field(default_factory=World)
    workers: int = 0  # DataLoader processes (--workers auto resolved)
    head_trainer: object = None  # features.FeatureTrainer: the head on cached features while the backbone is frozen
    choices: list[str] = field(default_factory=list)  # what --amp/--workers auto chose, for the first line
    # lines printed under the first line, one each: what an option given did not do, or what tudui did unasked
    notes: list[str] = field(default_factory=list)
    lock: FileLock | None = None  # rank 0: the run directory's lock, held until the run ends (core/lock.py)
    saved: int = -1  # the epoch last.pt holds, once this process has written it
    final_only: bool = False  # --resume of a run whose training ended but whose final evaluation did not
    epoch: int = 0  # epochs completed
    step: int = 0  # optimisation steps completed
    best_top1: float = -1.0
    best_epoch: int = 0
    stopped_early: bool = False  # --patience ended the epochs
    history: list[dict] = field(default_factory=list)

    @property
    def spec(self) -> DataSpec:
        return self.data.spec

    def close(self) -> None:
        """Let another training use the run directory (the lock also ends with the process, however it ends),
        and let go of the DDP wrapper, which holds the process group: a callback may keep this Run alive after
        training, and the group must be freed when the job is left (engine/distributed.teardown)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        self.ddp = self.train_module = self.train_step = None  # each holds the DDP wrapper under torchrun

    @property
    def steps_per_epoch(self) -> int:
        """Optimisation steps per epoch (--accumulate batches make one step)."""
        return -(-len(self.train_loader) // self.cfg.accumulate)

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation and best.pt use: the EMA with --ema, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def prepare(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 batch on the device -> augmented (when training) and normalised float batch."""
        if train and not self.cfg.overfit_batches:  # the overfitting check learns the batches as they are
            cfg, g = self.cfg, self.aug_generator
            mode = AUGMENTS[self.data.augment]  # what the resolved --augment does: core/modes.py
            if mode.photo:  # per-image crop, scale, flip (+ rotation, colour): data/augment.py
                x = resized_crop_batch(x, self.spec.img_size, tuple(cfg.crop_scale), flip=self.spec.hflip,
                                       rotate=cfg.rotate, jitter=cfg.color_jitter, generator=g)
            else:
                pad, flip = augment_options(self.data.augment, self.spec)
                x = augment_batch(x, pad, flip, g)
            if mode.policy:
                x = policy_batch(x, mode.policy, g)  # per-image ops and magnitudes (data/augment.py)
            x = erase_batch(x, cfg.erase, g)
        x = center_crop_batch(x, self.spec.img_size)  # photo rows not augmented: the evaluation crop
        x = normalize(x, self.spec)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """--mixup/--cutmix: (x, soft targets (B, K)); otherwise (x, y) unchanged."""
        cfg = self.cfg
        if cfg.mixup <= 0 and cfg.cutmix <= 0 or cfg.overfit_batches:
            return x, y
        return mix_batch(x, y, self.spec.num_classes, cfg.mixup, cfg.cutmix, cfg.mix_prob, self.aug_generator)

    def checkpoint(self, best: bool = False) -> dict:
        """last.pt: the trained weights, with the EMA beside them; best.pt with --ema: the EMA as the model."""
        extra = {"ema": self.ema.state_dict()} if self.ema is not None and not best else {}
        return make_checkpoint(
            self.eval_model if best else self.model, self.arch, self.spec.to_dict(), epoch=self.epoch, step=self.step,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), trainer={"best_top1": self.best_top1, "best_epoch": self.best_epoch},
            metrics=self.history[-1] if self.history else {}, config=self.cfg.to_dict(),
            resume=resume_state(self), **extra)  # RNG states and metrics rows for an exact --resume (engine/resume.py)
