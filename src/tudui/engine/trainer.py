"""Training: `fit(cfg)` builds everything, then runs a loop that fits on one screen."""
from __future__ import annotations

import csv
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from .. import __version__
from ..config import TrainConfig, save_yaml
from ..data import IMAGENET_MEAN, IMAGENET_STD, DataBundle, DataSpec, augment_batch, augment_options, build_data, \
    make_loader, normalize
from ..errors import TuduiError
from ..models import count_parameters, create_model, get_model_info
from ..models.zoo import head_path
from ..reporting.console import Progress
from .callbacks import Callback
from . import distributed
from .checkpoint import FORMAT, FORMAT_VERSION, save_checkpoint
from .device import autocast, make_scaler, reuse_freed_memory, seed_everything
from .guards import FiniteLossGuard
from .optim import create_loss, create_optimizer, create_scheduler
from .resume import restore_run, resume_state

CSV_FIELDS = ["epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "epoch_time_s", "images_per_s"]


@dataclass
class RunResult:
    run_dir: Path
    best: Path
    last: Path
    history: list[dict]  # results.csv rows
    val: dict | None  # best checkpoint on the validation split (metrics.summarize)
    test: dict | None  # best checkpoint on the test split, when the data has one
    spec: DataSpec


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
    world: distributed.World = field(default_factory=distributed.World)
    epoch: int = 0  # epochs completed
    step: int = 0  # optimisation steps completed
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def spec(self) -> DataSpec:
        return self.data.spec

    def prepare(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 batch on the device -> augmented (when training) and normalised float batch."""
        if train:
            pad, flip = augment_options(self.cfg.augment, self.spec)
            x = augment_batch(x, pad, flip, self.aug_generator)
        x = normalize(x, self.spec)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def checkpoint(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            # contiguous: channels-last weights are saved in the standard layout every reader expects
            "model": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
            "arch": self.arch, "data": self.spec.to_dict(), "epoch": self.epoch, "step": self.step,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "trainer": {"best_top1": self.best_top1, "best_epoch": self.best_epoch},
            "metrics": self.history[-1] if self.history else {},
            "config": self.cfg.to_dict(), "versions": versions(),
            "resume": resume_state(self),  # RNG states and metrics rows for an exact --resume (engine/resume.py)
        }


def versions() -> dict:
    return {"tudui": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def make_run_dir(project: str, name: str | None, exist_ok: bool) -> Path:
    """runs/exp, runs/exp2, ...; an existing name gets a number rather than being overwritten."""
    base = Path(project) / (name or "exp")
    if exist_ok or not base.exists():
        base.mkdir(parents=True, exist_ok=True)
        return base
    for i in range(2, 10_000):
        cand = base.with_name(f"{base.name}{i}")
        if not cand.exists():
            cand.mkdir(parents=True)
            return cand
    raise TuduiError(f"too many runs named {base}; pass --name")


def _check_forward(model: nn.Module, spec: DataSpec, name: str, device: torch.device) -> None:
    """One dry forward pass, so a size mismatch is a clear message before any work is done."""
    x = torch.zeros(2, spec.channels, spec.img_size, spec.img_size, device=device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as e:
        info = get_model_info(name)
        raise TuduiError(f"model {name} cannot take {spec.channels}x{spec.img_size}x{spec.img_size} input "
                         f"({str(e).splitlines()[0]}); try --img-size {info.default_size}") from None
    if out.shape != (2, spec.num_classes):
        raise TuduiError(f"model {name} returns shape {tuple(out.shape)}, expected (2, {spec.num_classes})")


def setup(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> Run:
    device, world = distributed.select_device(cfg.device), distributed.world()
    if device.type == "cpu":
        reuse_freed_memory()  # activations come from the heap, not fresh pages, every step
    seed_everything(cfg.seed, cfg.deterministic)  # same seed on every rank: same initial weights
    info = get_model_info(cfg.model)  # fail fast on a misspelt name, before loading data
    imagenet = (IMAGENET_MEAN, IMAGENET_STD) if cfg.weights and info.family == "torchvision" else None
    data = build_data(cfg, default_norm=imagenet)
    spec = data.spec
    kwargs = {"weights": cfg.weights} if cfg.weights else {}
    model = create_model(cfg.model, spec.num_classes, spec.channels, spec.img_size, **kwargs).to(device)
    arch = {"name": cfg.model, "num_classes": spec.num_classes, "in_channels": spec.channels,
            "img_size": spec.img_size, "kwargs": {}}  # weights are in the checkpoint, not re-loaded
    if cfg.channels_last:  # NHWC: oneDNN (CPU) and cuDNN run convolutions faster; ~1.4x for `fast` on a CPU
        model = model.to(memory_format=torch.channels_last)
    _check_forward(model, spec, cfg.model, device)
    if cfg.freeze_backbone:
        head = head_path(model)
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(head + ".")
    model, ddp = distributed.wrap(model, device, cfg.sync_bn)
    loader_args = dict(device=device, workers=cfg.workers, seed=cfg.seed, bad_images=cfg.bad_images,
                       rank=world.rank, world_size=world.size)  # each rank gets its own shard
    train_loader = make_loader(data.train, spec, cfg.batch_size, True, **loader_args)
    val_loader = make_loader(data.val, spec, max(cfg.batch_size, 512), False, **loader_args) if data.val else None
    if len(train_loader) == 0:
        raise TuduiError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(data.train)} images)")
    optimizer = create_optimizer(cfg, model)
    run = Run(cfg=cfg, device=device, data=data, model=model, arch=arch,
              criterion=create_loss(cfg, data.train.counts(), device), optimizer=optimizer,
              scheduler=create_scheduler(cfg, optimizer, len(train_loader)), scaler=make_scaler(device, cfg.amp),
              train_loader=train_loader, val_loader=val_loader,
              run_dir=distributed.on_main(make_run_dir, cfg.project, cfg.name, cfg.exist_ok),  # rank 0 names it
              # a different augmentation stream per rank
              aug_generator=torch.Generator(device=device).manual_seed(cfg.seed + 1_000_003 * world.rank),
              callbacks=list(callbacks or []) if world.rank == 0 else [], ddp=ddp, world=world)
    if world.rank == 0:  # only rank 0 writes the run directory
        resolved = cfg.to_dict() | {"img_size": spec.img_size, "channels": spec.channels, "mean": spec.mean,
                                    "std": spec.std, "hflip": spec.hflip, "name": run.run_dir.name, "resume": None,
                                    "nproc": world.local_size}  # so --config repeats a torchrun job
        save_yaml(resolved, run.run_dir / "config.yaml")
        if not cfg.resume:
            with open(run.run_dir / "results.csv", "w", newline="") as f:  # a new run starts a new table
                csv.DictWriter(f, fieldnames=CSV_FIELDS).writeheader()
        save_yaml(versions() | {"device": str(device), "threads": torch.get_num_threads(), "argv": sys.argv,
                                "world_size": world.size}, run.run_dir / "env.yaml")
    if cfg.resume:  # every rank: weights, optimizer, schedule, RNG states; results.csv keeps the run's rows
        restore_run(run, CSV_FIELDS)
        distributed.restore_rank_rng(run)
    return run


def train_one_epoch(run: Run, epoch: int) -> dict:
    model, opt, dev = run.ddp or run.model, run.optimizer, run.device
    model.train()
    loader = run.train_loader
    getattr(loader, "set_epoch", getattr(getattr(loader, "sampler", None), "set_epoch", lambda e: None))(epoch)
    progress = Progress(len(loader), f"epoch {epoch + 1}/{run.cfg.epochs}", enabled=run.world.rank == 0)
    loss_sum, seen, t0 = torch.zeros((), device=dev, dtype=torch.float64), 0, time.perf_counter()
    for x, y in loader:
        x = run.prepare(x.to(dev, non_blocking=True), train=True)  # (B, C, H, W) float
        y = y.to(dev, non_blocking=True)
        with autocast(dev, run.cfg.amp):
            loss = run.criterion(model(x), y)
        opt.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(opt)
        run.scaler.update()
        run.scheduler.step()
        run.step += 1
        loss_sum += loss.detach() * len(y)
        seen += len(y)
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
    with open(run.run_dir / "results.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    val = (f"val_loss {row['val_loss']:.4f}  top1 {row['val_top1']:.2%}  top5 {row['val_top5']:.2%}  "
           if row["val_top1"] != "" else "")
    print(f"epoch {row['epoch']}/{run.cfg.epochs}  train_loss {row['train_loss']:.4f}  {val}lr {row['lr']:.3g}  "
          f"{row['epoch_time_s']:.1f}s  {row['images_per_s']:.0f} img/s", flush=True)


def fit(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> RunResult:
    with distributed.session(cfg.device):  # joins the torchrun job, if any
        return _fit(cfg, callbacks)


def _fit(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> RunResult:
    from ..reporting import default_callbacks

    run = setup(cfg, [FiniteLossGuard(), *default_callbacks(cfg), *(callbacks or [])])  # rank 0 keeps them
    if run.world.rank == 0:
        _announce(run)
    for cb in run.callbacks:
        cb.on_fit_start(run)
    plain_ce = nn.CrossEntropyLoss()  # validation loss is comparable across recipes
    if run.epoch == 0:  # a run is resumable from its first step on (engine/resume.py)
        _save(run, ["last.pt"])
    stale = run.epoch - run.best_epoch if run.history else 0  # epochs since the best one (resumed runs)
    for epoch in range(run.epoch, cfg.epochs):
        lr = run.optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(run, epoch)
        val = distributed.evaluate(run.model, run.val_loader, run.spec, run.device, plain_ce, cfg.amp) \
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
    return _finish(run, plain_ce)


def _save(run: Run, names: list[str]) -> None:
    """Rank 0 writes the checkpoint(s); under torchrun it also holds every rank's augmentation RNG state."""
    rank_rng = distributed.gather_rank_rng(run)  # a collective: every rank calls it
    if run.world.rank == 0:
        payload = run.checkpoint()
        payload["resume"] |= rank_rng
        for name in names:
            save_checkpoint(payload, run.run_dir / name)


def _announce(run: Run) -> None:
    d, s = run.data, run.spec
    sizes = f"{len(d.train):,} train" + (f" / {len(d.val):,} val" if d.val else "") + \
        (f" / {len(d.test):,} test" if d.test else "")
    print(f"tudui {__version__}: {run.cfg.model} ({count_parameters(run.model):,} params) on {', '.join(run.cfg.data)}: "
          f"{sizes}, {s.num_classes} classes, {s.channels}x{s.img_size}x{s.img_size}, "
          f"{'in memory' if d.in_memory else 'from files'}, device {run.device}{_world_note(run)} -> {run.run_dir}",
          flush=True)


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
    args = dict(device=run.device, workers=run.cfg.workers, bad_images=run.cfg.bad_images, rank=run.world.rank,
                world_size=run.world.size)
    val = distributed.evaluate(run.model, run.val_loader, run.spec, run.device, criterion) if run.val_loader else None
    test = None
    if run.data.test is not None:
        test_loader = make_loader(run.data.test, run.spec, max(run.cfg.batch_size, 512), False, **args)
        test = distributed.evaluate(run.model, test_loader, run.spec, run.device, criterion)
    result = RunResult(run.run_dir, best, run.run_dir / "last.pt", run.history, val, test, run.spec)
    if run.world.rank != 0:
        return result
    summary = {"best_epoch": run.best_epoch, "val": val, "test": test}
    (run.run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    parts = [f"best epoch {run.best_epoch}"]
    if val:
        parts.append(f"val top1 {val['top1']:.2%}")
    if test:
        parts.append(f"test top1 {test['top1']:.2%} top5 {test['top5']:.2%} loss {test['loss']:.4f}")
    print("done: " + ", ".join(parts) + f"; weights: {best}", flush=True)
    for cb in run.callbacks:
        cb.on_fit_end(run, result)
    return result


def train(cfg: TrainConfig | None = None, callbacks: list[Callback] | None = None, **overrides) -> RunResult:
    """Library entry point: `tudui.train(data="fashion-mnist", epochs=5)` or `tudui.train(cfg)`."""
    values = (cfg.to_dict() if cfg else {}) | overrides
    return fit(TrainConfig.from_dict(values), callbacks)
