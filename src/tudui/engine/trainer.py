"""Training: `fit(cfg)` sets a run up, then runs a loop that fits on one screen.

Set-up is a few small steps (device and seed, data, model, loaders, optimisation, run directory, resume);
`train_one_epoch` and `evaluate` (engine/evaluate.py) are the loop. Reporting (TensorBoard, pictures) and
Ctrl-C handling come in as callbacks from the layers above (api.py).
"""
from __future__ import annotations

import errno
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..core import __version__
from ..core.checkpoint import make_checkpoint, save_checkpoint
from ..core.config import TrainConfig, load_yaml, save_yaml
from ..core.console import Progress, shown
from ..core.device import World, autocast, make_scaler, reuse_freed_memory, seed_everything, select_device, world
from ..core.errors import TuduiError
from ..core.files import close_run_dir, open_run_dir, versions, write_text
from ..core.lock import FileLock
from ..data import (IMAGENET_MEAN, IMAGENET_STD, DataBundle, DataSpec, augment_batch, augment_options, build_data,
                    eval_batch_size, make_loader, normalize)
from ..data.images import resize_side
from ..data.augment import center_crop_batch, erase_batch, mix_batch, policy_batch, resized_crop_batch
from ..core.checkpoint import read_weights
from ..models import count_parameters, create_model, get_model_info, make_arch
from ..core.pyfile import is_file_ref
from ..models.user import call_builder, module_in_channels, parse_model_args, ref_for, source_record
from ..models.zoo import head_path, load_weights, weights_crop_pct
from . import cuda_graph, distributed, features, finetune
from .choices import resolve_amp, resolve_cuda_graph, resolve_model, resolve_workers
from .callbacks import Callback
from .evaluate import evaluate
from .metrics import TopMistakes
from .ema import ModelEMA
from .guards import FiniteLossGuard
from .lr_find import lr_range_test
from .optim import continue_schedule, create_loss, create_optimizer, create_scheduler
from .results import append_result, write_results
from .signals import resume_command
from .resume import gather_rank_rng, restore_run, resume_state


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
    graph: cuda_graph.GraphedStep | None = None  # --cuda-graph: forward + loss + backward replayed as one graph
    world: World = field(default_factory=World)
    workers: int = 0  # DataLoader processes (--workers auto resolved)
    head_trainer: object = None  # features.FeatureTrainer: the head on cached features while the backbone is frozen
    choices: list[str] = field(default_factory=list)  # what --amp/--workers auto chose, for the first line
    lock: FileLock | None = None  # rank 0: the run directory's lock, held until the run ends (core/lock.py)
    saved: int = -1  # the epoch last.pt holds, once this process has written it
    final_only: bool = False  # --resume of a run whose training ended but whose final evaluation did not
    epoch: int = 0  # epochs completed
    step: int = 0  # optimisation steps completed
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def spec(self) -> DataSpec:
        return self.data.spec

    def close(self) -> None:
        """Let another training use the run directory (the lock also ends with the process, however it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

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
            if self.data.augment == "photo":  # per-image crop, scale, flip (+ rotation, colour): data/augment.py
                x = resized_crop_batch(x, self.spec.img_size, tuple(cfg.crop_scale), flip=self.spec.hflip,
                                       rotate=cfg.rotate, jitter=cfg.color_jitter, generator=g)
            else:
                pad, flip = augment_options(self.data.augment, self.spec)
                x = augment_batch(x, pad, flip, g)
            if cfg.augment in ("randaugment", "trivialaugment"):
                x = policy_batch(x, cfg.augment, g)  # per-image ops and magnitudes (data/augment.py)
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


def _check_forward(model: nn.Module, spec: DataSpec, name: str, device: torch.device, hint: str) -> None:
    """One dry forward pass, so a size mismatch is a clear message before any work is done."""
    x = torch.zeros(2, spec.channels, spec.img_size, spec.img_size, device=device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as e:
        raise TuduiError(f"model {name} cannot take {spec.channels}x{spec.img_size}x{spec.img_size} input "
                         f"({str(e).splitlines()[0]}); {hint}") from None
    if not isinstance(out, torch.Tensor) or out.shape != (2, spec.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TuduiError(f"model {name} returns {got} for a batch of 2 images; a classifier for {spec.num_classes} "
                         f"classes must return logits of shape (2, {spec.num_classes}), i.e. (batch, num_classes)")


def _instantiate(cfg: TrainConfig, spec: DataSpec) -> tuple[nn.Module, str, str | None, dict]:
    """(untrained model, its name, 'file.py:Name' of user code or None, constructor args) for cfg.model:
    a registered name, 'file.py:Name', an nn.Module instance or a builder callable (library)."""
    args = parse_model_args(cfg.model_args)
    m, shape = cfg.model, (spec.num_classes, spec.channels, spec.img_size)
    if isinstance(m, nn.Module):
        if args:
            raise TuduiError("model_args apply when tudui builds the model; this one is already built")
        ref = ref_for(m)
        return m, ref or type(m).__name__, ref, args
    if callable(m) and not isinstance(m, str):
        ref = ref_for(m)
        return call_builder(m, *shape, args), ref or getattr(m, "__name__", "model"), ref, args
    # registered builders load (or download) initial weights themselves; user code gets them in build_model
    weights = {"weights": cfg.weights} if cfg.weights and not is_file_ref(m) else {}
    return create_model(m, *shape, **args, **weights), m, (m if is_file_ref(m) else None), args


def build_model(cfg: TrainConfig, spec: DataSpec, device: torch.device) -> tuple[nn.Module, dict]:
    """(model on `device`, its arch record): initial weights, channels-last, a dry run, a frozen backbone."""
    model, name, ref, args = _instantiate(cfg, spec)
    user_code = ref is not None or not isinstance(cfg.model, str)
    if cfg.weights and user_code:
        load_weights(model, read_weights(cfg.weights), cfg.weights)
    model = model.to(device)
    if cfg.channels_last:  # NHWC: oneDNN (CPU) and cuDNN run convolutions faster; ~1.4x for `fast` on a CPU
        model = model.to(memory_format=torch.channels_last)
    if not isinstance(cfg.model, str):  # an object: only a library call passes one, so the keywords are named
        hint = "check its first layer's in_channels (channels=) and the size its Linear expects (img_size=)"
    else:
        hint = "check its first layer's in_channels (--channels) and the size its Linear expects (--img-size)" \
            if user_code else f"try --img-size {get_model_info(cfg.model).default_size}"
    _check_forward(model, spec, name, device, hint)
    if cfg.freeze_backbone or cfg.fine_tune:  # the head alone trains first (engine/finetune.py)
        finetune.set_trainable(model, head_path(model), backbone=False)
    arch = make_arch(name, spec.num_classes, spec.channels, spec.img_size, **args)
    if user_code:  # rebuilt later from its file
        arch["source"] = source_record(ref, args) if ref else {"name": name, "path": None, "args": args}
    return model, arch


def build_loaders(cfg: TrainConfig, data: DataBundle, device: torch.device, w: World, workers: int = 0) -> tuple:
    """(train loader, val loader or None); under torchrun each rank gets its own shard."""
    args = dict(device=device, workers=workers, seed=cfg.seed, bad_images=cfg.bad_images, rank=w.rank,
                world_size=w.size, in_memory=data.in_memory)
    train = make_loader(data.train, data.spec, cfg.batch_size, True, layout=data.train_layout, **args)
    if len(train) == 0:
        raise TuduiError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(data.train)} images)")
    val = make_loader(data.val, data.spec, eval_batch_size(cfg.batch_size), False, **args) if data.val else None
    return train, val


def write_run_files(run: Run) -> None:
    """Rank 0: config.yaml (fully resolved, so --config repeats the run), env.yaml, a new results.csv."""
    cfg, spec, w = run.cfg, run.spec, run.world
    resolved = cfg.to_dict() | {"img_size": spec.img_size, "channels": spec.channels, "mean": spec.mean,
                                "std": spec.std, "hflip": spec.hflip, "name": run.run_dir.name, "resume": None,
                                "nproc": w.local_size,  # so --config repeats a torchrun job
                                "augment": run.data.augment, "crop_pct": spec.crop_pct or 0}  # auto, as chosen
    save_yaml(resolved, run.run_dir / "config.yaml")
    if not cfg.resume:
        write_results(run.run_dir / "results.csv", [])  # a new run starts a new table
        (run.run_dir / "metrics.json").unlink(missing_ok=True)  # an older run's (--exist-ok): written again at the end
    save_yaml(versions() | {"device": str(run.device), "threads": torch.get_num_threads(), "argv": sys.argv,
                            "world_size": w.size}, run.run_dir / "env.yaml")


def debug_splits(cfg: TrainConfig, data: DataBundle) -> None:
    """--fast-dev-run: one batch of each split; --overfit-batches N: the same N training batches as train and val."""
    first = lambda split, n: split.subset(np.arange(min(n, len(split)))) if split is not None else None  # noqa: E731
    if cfg.fast_dev_run:
        data.train, data.val, data.test = (first(data.train, cfg.batch_size), first(data.val, cfg.batch_size),
                                           first(data.test, cfg.batch_size))
    elif cfg.overfit_batches:
        data.train = first(data.train, cfg.overfit_batches * cfg.batch_size)
        data.val, data.test = data.train, None


def resolve_lr(cfg: TrainConfig, run: "Run") -> None:
    """--lr auto: a range test on the run's model and data (restored afterwards), then its suggestion."""
    if cfg.lr != "auto":
        return
    if run.world.enabled:
        raise TuduiError("--lr auto runs in one process; run `tudui lr-find` first and pass its --lr to the "
                         "torchrun job")
    found = lr_range_test(run.model, run.train_loader, lambda x, y: (run.prepare(x, False), y), run.criterion,
                          lambda: create_optimizer(replace(cfg, lr=1e-7), run.model), run.device, cfg.amp)
    cfg.lr = float(f"{found.suggestion:.3g}")
    run.optimizer = create_optimizer(cfg, run.model)
    run.scheduler = create_scheduler(cfg, run.optimizer, run.steps_per_epoch)
    print(f"--lr auto: {cfg.lr:g} ({found.rule}; {len(found.lrs)} steps of the range test)", flush=True)


def setup(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> Run:
    """A Run ready to train; its directory stays locked until `run.close()` (fit does it), so no second training
    writes into it meanwhile."""
    held: list = []  # rank 0: (lock, created now)

    def claim() -> Path:
        run_dir, lock, created = open_run_dir(cfg.project, cfg.name, cfg.exist_ok)
        held.append((lock, created))
        return run_dir

    # The run directory first (rank 0 names and locks it, every rank learns its name): a name that cannot be used
    # or a directory another live training holds is refused before any data is read.
    run_dir = distributed.on_main(claim)
    try:
        run = _setup(cfg, callbacks, run_dir)
    except BaseException:
        if held:  # a directory made for this run and still empty is removed again
            close_run_dir(run_dir, *held[0])
        raise
    run.lock = held[0][0] if held else None
    return run


def _setup(cfg: TrainConfig, callbacks: list[Callback] | None, run_dir: Path) -> Run:
    device, w = select_device(cfg.device), world()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.fast_dev_run:
        cfg.epochs = 1
    if device.type == "cpu":
        reuse_freed_memory()  # activations come from the heap, not fresh pages, every step
    seed_everything(cfg.seed, cfg.deterministic)  # same seed on every rank: same initial weights
    model_note = resolve_model(cfg, device)  # --model auto: by what the device computes natively
    # fail fast on a misspelt name or a broken file, before loading data
    info = get_model_info(cfg.model) if isinstance(cfg.model, str) else None
    pretrained = bool(cfg.weights and info and info.family == "torchvision")
    imagenet = (IMAGENET_MEAN, IMAGENET_STD) if pretrained else None  # and the weights' own evaluation crop:
    data = build_data(cfg, default_norm=imagenet, default_crop=weights_crop_pct(cfg.model, cfg.weights) if pretrained
                      else None, default_channels=module_in_channels(cfg.model))  # a built model's own channels
    debug_splits(cfg, data)
    model, arch = build_model(cfg, data.spec, device)
    workers, workers_note = resolve_workers(cfg, data, w)
    choices = [model_note, resolve_amp(cfg, model, data.spec, device), workers_note]
    model, ddp = distributed.wrap(model, device, cfg.sync_bn)
    train_loader, val_loader = build_loaders(cfg, data, device, w, workers)
    placeholder = replace(cfg, lr=1e-7) if cfg.lr == "auto" else cfg  # --lr auto: resolve_lr replaces both below
    optimizer = create_optimizer(placeholder, model)
    steps = -(-len(train_loader) // cfg.accumulate)
    run = Run(cfg=cfg, device=device, data=data, model=model, arch=arch,
              criterion=create_loss(cfg, data.train.counts(), device), optimizer=optimizer,
              scheduler=create_scheduler(placeholder, optimizer, steps), scaler=make_scaler(device, cfg.amp),
              train_loader=train_loader, val_loader=val_loader,
              run_dir=run_dir,
              # a different augmentation stream per rank
              aug_generator=torch.Generator(device=device).manual_seed(cfg.seed + 1_000_003 * w.rank),
              callbacks=list(callbacks or []) if w.rank == 0 else [], ddp=ddp, world=w,
              ema=ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None, workers=workers,
              choices=[c for c in choices if c])
    run.train_module = torch.compile(ddp or model) if cfg.compile else (ddp or model)
    # arch["source"] marks a model of the user's (build_model), as it does wherever a checkpoint is rebuilt
    graphed, graph_note = resolve_cuda_graph(cfg, device, ddp is not None, registered="source" not in arch)
    run.graph = cuda_graph.GraphedStep(run.train_module, run.criterion, device, cfg.amp, run.scaler.scale) \
        if graphed else None
    run.choices += [graph_note] if graph_note else []
    run.head_trainer = features.maybe_feature_trainer(run)  # --freeze-backbone / --fine-tune: cached features
    resolve_lr(cfg, run)
    if arch.get("source", {}).get("path"):  # the user's file relative to the run: found again if both move
        arch["source"]["relpath"] = os.path.relpath(arch["source"]["path"], run.run_dir.resolve())
    if w.rank == 0:  # only rank 0 writes the run directory
        write_run_files(run)
    if cfg.resume:  # every rank: weights, optimizer, schedule, RNG states; results.csv keeps the run's rows
        restore_run(run)
        run.saved = run.epoch
    return run


def optimizer_step(run: Run) -> None:
    """Unscale (fp16), clip (--clip-grad), step, schedule, EMA; gradients cleared for the next step."""
    if run.cfg.clip_grad:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.step += 1
    if run.ema is not None:
        run.ema.update(run.model)


def train_one_epoch(run: Run, epoch: int) -> dict:
    model, dev, acc = run.train_module, run.device, run.cfg.accumulate
    model.train()
    if finetune.frozen_phase(run.cfg, epoch):  # the frozen backbone in eval mode: its BatchNorm statistics kept
        finetune.set_frozen_modes(run.model, head_path(run.model))
    loader = run.train_loader
    getattr(loader, "set_epoch", getattr(getattr(loader, "sampler", None), "set_epoch", lambda e: None))(epoch)
    progress = Progress(len(loader), f"epoch {epoch + 1}/{run.cfg.epochs}", enabled=run.world.rank == 0)
    loss_sum, seen, t0 = torch.zeros((), device=dev, dtype=torch.float64), 0, time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(loader):
        x = run.prepare(x.to(dev, non_blocking=True), train=True)  # (B, C, H, W) float
        x, y = run.mix(x, y.to(dev, non_blocking=True))  # y: (B,) classes, or (B, K) soft targets when mixing
        loss = run.graph(x, y) if run.graph is not None else None  # one replay; None: no graph, step eagerly
        if loss is None:
            with autocast(dev, run.cfg.amp):
                loss = run.criterion(model(x), y)
            run.scaler.scale(loss / acc).backward()  # gradients summed over `acc` batches: their mean loss
        loss_sum += loss.detach() * len(y)
        seen += len(y)
        if (i + 1) % acc and i + 1 < len(loader):
            progress.update(1)
            continue
        optimizer_step(run)
        for cb in run.callbacks:
            cb.on_train_batch(run, run.step, x, y, loss.detach())
        if progress.due():  # .item() syncs the device: only when something is shown
            progress.update(1, loss=f"{loss_sum.item() / seen:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        else:
            progress.update(1)
    progress.close()
    # Over all ranks: the mean loss of every image trained on, images/s of the whole job.
    total, seen, dt = distributed.reduce_train_stats(loss_sum.item(), seen, time.perf_counter() - t0, dev)
    return {"train_loss": total / max(seen, 1), "epoch_time_s": dt, "images_per_s": seen / dt}


def _log_epoch(run: Run, row: dict) -> None:
    append_result(run.run_dir / "results.csv", row)
    val = (f"val_loss {row['val_loss']:.4f}  top1 {row['val_top1']:.2%}  top5 {row['val_top5']:.2%}  "
           if row["val_top1"] != "" else "")
    print(f"epoch {row['epoch']}/{run.cfg.epochs}  train_loss {row['train_loss']:.4f}  {val}lr {row['lr']:.3g}  "
          f"{row['epoch_time_s']:.1f}s  {row['images_per_s']:.0f} img/s", flush=True)


class TimeBudget:
    """--time MINUTES: after each epoch, the epochs that fit in the time left set the run's length, and the
    learning-rate schedule is stretched or shrunk to end with them (as Ultralytics' `time=`). Under torchrun
    rank 0's clock decides for every rank, so all stop together."""

    def __init__(self, minutes: float, start_epoch: int) -> None:
        self.seconds, self.start, self.start_epoch = minutes * 60, time.perf_counter(), start_epoch

    def epochs_that_fit(self, done: int) -> int:
        elapsed = time.perf_counter() - self.start
        per_epoch = elapsed / max(1, done - self.start_epoch)  # seconds, validation and saving included
        return max(done, done + int((self.seconds - elapsed) // per_epoch))

    def plan(self, run: Run) -> None:
        epochs = distributed.on_main(self.epochs_that_fit, run.epoch)
        if epochs == run.cfg.epochs:
            return
        run.cfg.epochs = epochs
        run.scheduler = create_scheduler(run.cfg, run.optimizer, run.steps_per_epoch)
        continue_schedule(run.scheduler, run.step)
        if run.world.rank == 0:
            save_yaml(load_yaml(run.run_dir / "config.yaml") | {"epochs": epochs}, run.run_dir / "config.yaml")


def fit(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> RunResult:
    with distributed.session(cfg.device):  # joins the torchrun job, if any
        try:
            return _fit(cfg, callbacks)
        except ValueError as e:  # torch's BatchNorm refuses to train on one value per channel
            if "more than 1 value per channel" not in str(e):
                raise
            raise TuduiError(f"a BatchNorm layer of the model got one value per channel to train on "
                             f"({str(e).splitlines()[0]}): a batch of one image whose feature map is 1x1 there; "
                             f"use --batch-size 2 or more (now {cfg.batch_size}; a training set of one image "
                             f"cannot train it either) or a larger --img-size") from None


def _fit(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> RunResult:
    run = setup(cfg, [FiniteLossGuard(), *(callbacks or [])])  # rank 0 keeps them
    try:
        return _train(run)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not _inside(e.filename, run.run_dir):
            raise
        # e.g. the run directory made read-only (or its disk remounted so) while the run writes it
        raise TuduiError(f"cannot write in {shown(run.run_dir)} ({e.strerror}); "
                         f"{'last.pt holds epoch ' + str(run.saved) if run.saved >= 0 else 'no epoch was saved'}. "
                         f"Make it writable again and continue with: {resume_command(run)}") from None
    finally:
        run.close()


def _inside(path, folder: Path) -> bool:
    """Whether the file an OSError names is `folder` or in it (not, say, an unreadable image)."""
    if not path:
        return False
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def _train(run: Run) -> RunResult:
    """The epochs, then the final evaluation of the best weights."""
    cfg = run.cfg
    if run.world.rank == 0:
        _announce(run)
    for cb in run.callbacks:
        cb.on_fit_start(run)
    plain_ce = nn.CrossEntropyLoss()  # validation loss is comparable across recipes
    if run.epoch == 0:  # a run is resumable from its first step on (engine/resume.py)
        _save(run, ["last.pt"])
    stale = run.epoch - run.best_epoch if run.history else 0  # epochs since the best one (resumed runs)
    budget = TimeBudget(cfg.time, run.epoch) if cfg.time else None
    epoch = run.epoch
    while epoch < cfg.epochs and not run.final_only:
        finetune.begin_epoch(run, epoch)  # --fine-tune: unfreeze the backbone at its epoch
        lr = run.optimizer.param_groups[0]["lr"]
        on_features = features.active(run.head_trainer, run, epoch)  # the head alone, on cached features
        stats = run.head_trainer.train_epoch(epoch, optimizer_step) if on_features else train_one_epoch(run, epoch)
        if on_features:
            val = run.head_trainer.evaluate(run.eval_model, plain_ce)
        else:
            val = evaluate(run.eval_model, run.val_loader, run.spec, run.device, plain_ce, cfg.amp) \
                if run.val_loader else None
        run.epoch = epoch + 1
        row = {"epoch": run.epoch, "train_loss": stats["train_loss"], "val_loss": val["loss"] if val else "",
               "val_top1": val["top1"] if val else "", "val_top5": val["top5"] if val else "", "lr": lr,
               "epoch_time_s": stats["epoch_time_s"], "images_per_s": stats["images_per_s"]}
        run.history.append(row)
        improved = val is None or val["top1"] > run.best_top1
        if improved:
            run.best_top1, run.best_epoch, stale = (val["top1"] if val else -1.0), run.epoch, 0
        else:
            stale += 1
        _save(run, ["last.pt", "best.pt"] if improved else ["last.pt"])  # val is the same on every rank
        if run.world.rank == 0:
            _log_epoch(run, row)
        for cb in run.callbacks:
            cb.on_epoch_end(run, row, val)
        if cfg.patience is not None and stale >= cfg.patience:
            if run.world.rank == 0:
                print(f"early stop: no better validation top-1 for {cfg.patience} epoch(s); "
                      f"best was epoch {run.best_epoch}")
            break
        if budget is not None:
            budget.plan(run)  # after each epoch: how many fit in what is left of --time
        epoch += 1
    for cb in run.callbacks:
        getattr(cb, "on_train_end", lambda run: None)(run)  # (a hook newer than some callbacks written for tudui)
    return _finish(run, plain_ce)


def _save(run: Run, names: list[str]) -> None:
    """Rank 0 writes the checkpoint(s); under torchrun it also holds every rank's augmentation RNG state."""
    rank_rng = gather_rank_rng(run)  # a collective: every rank calls it
    if run.world.rank == 0:
        for name in names:
            payload = run.checkpoint(best=name == "best.pt")
            payload["resume"] |= rank_rng
            save_checkpoint(payload, run.run_dir / name)
            if name == "last.pt":
                run.saved = run.epoch


def _announce(run: Run) -> None:
    d, s = run.data, run.spec
    sizes = f"{len(d.train):,} train" + (f" / {len(d.val):,} val" if d.val else "") + \
        (f" / {len(d.test):,} test" if d.test else "")
    options = run.cfg.to_dict()  # objects given to the library appear as descriptions
    print(f"tudui {__version__}: {run.arch['name']} ({count_parameters(run.model):,} params) on "
          f"{', '.join(map(shown, options['data']))}: "
          f"{sizes}, {s.num_classes} classes, {s.channels}x{s.img_size}x{s.img_size}, "
          f"{'; '.join(d.notes) if d.notes else ('in memory' if d.in_memory else 'from files')}, "
          f"device {run.device}{_world_note(run)}, {'; '.join(_chosen(run))} -> {shown(run.run_dir)}", flush=True)


def _chosen(run: Run) -> list[str]:
    """What the run chose for the user: augmentation and evaluation crop, precision, workers, cached features."""
    s, d = run.spec, run.data
    crop = f"eval resize {resize_side(s.img_size, s.crop_pct)} + centre crop {s.img_size}" if s.crop_pct else \
        "eval squash"
    augment = f"augment {d.augment}" + (" (RGB photos)" if d.photo and run.cfg.augment == "auto" else "")
    if d.augment in ("flip", "crop-flip") and not s.hflip:  # digits: a mirrored 2 is no 2 (data/sources.NAMED)
        augment = f"augment {'none' if d.augment == 'flip' else 'crop'} (flips would change this data's labels; " \
                  "--hflip allows them)"
    out = [f"{augment}, {crop}"]
    out += run.choices
    if run.head_trainer is not None:
        out.append(f"head on cached features ({run.head_trainer.max_views} view(s))")
    return out


def _world_note(run: Run) -> str:
    """', 2 processes x batch 256 = global batch 512' under torchrun (--batch-size is per process)."""
    w = run.world
    return f", {w.size} processes x batch {run.cfg.batch_size} = global batch {w.size * run.cfg.batch_size}" \
        if w.enabled else ""


def _finish(run: Run, criterion: nn.Module) -> RunResult:
    """Reload the best weights and report them on validation and test data."""
    best = run.run_dir / "best.pt"
    if run.world.rank == 0:  # the file is on rank 0's machine; the weights go to the others
        state = torch.load(best, map_location=run.device, weights_only=True)["model"]
        run.model.load_state_dict(state)
    distributed.broadcast_module(run.model)
    mistakes = TopMistakes()
    val = evaluate(run.model, run.val_loader, run.spec, run.device, criterion, mistakes=mistakes) \
        if run.val_loader else None
    test = None
    if run.data.test is not None:
        test_loader = make_loader(run.data.test, run.spec, eval_batch_size(run.cfg.batch_size), False, run.device,
                                  workers=run.workers, bad_images=run.cfg.bad_images, rank=run.world.rank,
                                  world_size=run.world.size, in_memory=run.data.in_memory)
        test = evaluate(run.model, test_loader, run.spec, run.device, criterion,
                        mistakes=None if val is not None else mistakes)
    result = RunResult(run.run_dir, best, run.run_dir / "last.pt", run.history, val, test, run.spec,
                       mistakes.items if val is not None or test is not None else None)
    if run.world.rank != 0:
        return result
    parts = [f"best epoch {run.best_epoch}"]
    if val:
        parts.append(f"val top1 {val['top1']:.2%}")
    if test:
        parts.append(f"test top1 {test['top1']:.2%} top5 {test['top5']:.2%} loss {test['loss']:.4f}")
    print("done: " + ", ".join(parts) + f"; weights: {shown(best)}", flush=True)
    for cb in run.callbacks:  # the pictures
        cb.on_fit_end(run, result)
    # Last: metrics.json says the final evaluation is complete (`--resume` of a run without it does that evaluation).
    summary = {"best_epoch": run.best_epoch, "epoch": run.epoch, "val": val, "test": test}
    write_text(run.run_dir / "metrics.json", json.dumps(summary, indent=1, ensure_ascii=False))
    return result
