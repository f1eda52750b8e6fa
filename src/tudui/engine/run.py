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
from ..core.errors import TuduiError
from ..core.modes import AUGMENTS
from ..core.notebook import display, escape, html_table, in_notebook, png_uri
from ..data import DataBundle, DataSpec, augment_batch, augment_options, normalize
from ..data.loaders import stop_workers
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
    # (this process's share under torchrun): [(probability, (H, W, C) uint8, true, predicted)]; a multi-label
    # model's: the images furthest from their labels, [(error, image, (K,) probabilities, (K,) targets)]
    mistakes: list | None = None
    best_epoch: int | None = None  # the epoch best.pt holds
    model: str = ""  # the architecture's name ("fast", "resnet18", "model.py:Net")
    data: str = ""  # what it was trained on, as the first line says it ("digits", "data/pets")
    # the run's pictures by name, as the pictures callback (reporting/plots.py) wrote them: "curves", "confusion",
    # "pr_curves" (multi-label), "mistakes", "batch" -> the PNG's path
    pictures: dict[str, Path] = field(default_factory=dict)
    # a multi-label model's (probabilities (N, K), multi-hot targets (N, K)) numpy arrays of the split the pictures
    # use, from the same final pass: its precision-recall curves (pr_curves.png)
    scores: tuple | None = None

    def __repr__(self) -> str:
        """One short line instead of arrays: `RunResult(fast on digits: best epoch 3, val top1 95.00%, test top1
        94.72%; runs/exp)`."""
        return f"RunResult({self.summary()})"

    def summary(self) -> str:
        what = f"{self.model or 'model'} on {self.data or 'data'}: best epoch {self.best_epoch}"
        metrics = [f"{split} mAP {m['map']:.2%}" if "map" in m else f"{split} top1 {m['top1']:.2%}"  # multi-label: mAP
                   for split, m in (("val", self.val), ("test", self.test)) if m]
        return ", ".join([what, *metrics]) + f"; {self.run_dir}"

    def images(self, what: str | None = None) -> list:
        """The run's pictures as PIL images: all that were drawn, in the order curves, confusion, pr_curves, mistakes,
        batch, or the one named (raises TuduiError when it was not drawn or `what` names none)."""
        from PIL import Image

        if what is not None and what not in PICTURES:
            raise TuduiError(f"show() takes one of {', '.join(map(repr, PICTURES))}, not {what!r}")
        names = [n for n in PICTURES if n in self.pictures and (what is None or n == what)]
        if what is not None and not names:
            raise TuduiError(f"this run drew no {what} picture (trained with plots=False, or it had nothing to draw)")
        out = []
        for name in names:
            with Image.open(self.pictures[name]) as im:
                out.append(im.copy())  # loaded: the file may be replaced by a later run in the same folder
        return out

    def show(self, what: str | None = None) -> "Pictures":
        """The run's pictures: `show()` all of them, `show("curves" | "confusion" | "pr_curves" | "mistakes" |
        "batch")` one. In a notebook each is displayed inline. Returns the PIL images, a list (one image for a name given)."""
        images = Pictures(self.images(what))
        images.displayed = in_notebook()
        for im in images:
            display(im)
        return images

    def _repr_html_(self) -> str:
        """The summary as a table with the training curves under it (what a notebook shows for a RunResult)."""
        rows = [["model", self.model], ["data", self.data], ["best epoch", self.best_epoch]]
        for split, m in (("val", self.val), ("test", self.test)):
            if m:
                top5 = f", top5 {m['top5']:.2%}" if m.get("top5") is not None and len(self.spec.classes) > 5 else ""
                if "map" in m:  # a multi-label model
                    rows.append([split, f"mAP {m['map']:.2%}, macro-F1 {m['macro_f1']:.2%}, exact match "
                                        f"{m['exact_match']:.2%}, loss {m['loss']:.4f}"])
                else:
                    rows.append([split, f"top1 {m['top1']:.2%}{top5}, loss {m['loss']:.4f}"])
        rows += [["run directory", self.run_dir], ["best weights", self.best]]
        out = html_table(["RunResult", ""], rows)
        if "curves" in self.pictures and Path(self.pictures["curves"]).is_file():
            out += f'<img src="{png_uri(self.pictures["curves"], 900)}" alt="{escape("training curves")}">'
        return out


class Pictures(list):
    """The PIL images `RunResult.show()` returns. A notebook has displayed them already, so as a cell's result they
    show nothing more (IPython asks `_ipython_display_` before any other way of showing an object)."""

    displayed = False

    def _ipython_display_(self) -> None:
        if not self.displayed:  # IPython without a kernel (its terminal shell): the list as text
            print(repr(list(self)))


# RunResult.show's names, in the order show() gives them
PICTURES = ("curves", "confusion", "pr_curves", "mistakes", "batch")


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
    best_score: float = -1.0  # the best epoch's validation figure --best-by ranks by (trainer.score)
    best_epoch: int = 0
    stopped_early: bool = False  # --patience ended the epochs
    history: list[dict] = field(default_factory=list)
    calibration: dict | None = None  # --calibrate on: the temperature and ECE before/after (engine/calibration.py)

    @property
    def spec(self) -> DataSpec:
        return self.data.spec

    def close(self) -> None:
        """Let another training use the run directory (the lock also ends with the process, however it ends),
        and let go of the DDP wrapper, which holds the process group: a callback may keep this Run alive after
        training, and the group must be freed when the job is left (engine/distributed.teardown). The loaders'
        worker processes end here too (data/loaders.stop_workers)."""
        stop_workers(self.train_loader)
        stop_workers(self.val_loader)
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
            scaler=self.scaler.state_dict(), trainer={"best_score": self.best_score, "best_epoch": self.best_epoch},
            metrics=self.history[-1] if self.history else {}, config=self.cfg.to_dict(),
            resume=resume_state(self), **extra)  # RNG states and metrics rows for an exact --resume (engine/resume.py)
