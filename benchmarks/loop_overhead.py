"""Loop overhead: tudui's trainer against a plain hand-written PyTorch loop (and Lightning's Trainer), in one run.

All contestants get the same pieces, each from its own `engine.setup.setup` of the same TrainConfig (tudui's
defaults on Fashion-MNIST): the default model, the training set already in memory as a (N, 1, 28, 28) uint8
tensor, the batch size, loss, optimizer, per-step schedule and per-batch augmentation + normalisation
(`Run.prepare`). Only the loop around the step differs:
  - plain: a hand-written loop over a shuffled index (forward, backward, step, schedule);
  - tudui: `engine.trainer.train_one_epoch` (progress display, loss bookkeeping, and the callbacks `tudui train`
    runs with: the finite-loss guard, TensorBoard and plots as configured by default);
  - lightning: `lightning.Trainer.fit` on a LightningModule with the same step (logger, checkpoints, progress bar
    and model summary off: its best case), when `lightning` is importable (a benchmark-only dependency).
Each epoch is timed on its own; the first of each contestant is a warm-up and not counted. Plain and tudui
epochs alternate so drift in the machine's load touches both alike; Lightning runs as one block after them.

    .venv/bin/python benchmarks/loop_overhead.py [--quick] [--repeats 5]
"""
from __future__ import annotations

import logging
import time

import _common as C
import torch

from tudui import TrainConfig
from tudui.core.device import autocast
from tudui.engine.guards import FiniteLossGuard
from tudui.engine.run import Run
from tudui.engine.setup import setup
from tudui.engine.trainer import train_one_epoch
from tudui.api import default_callbacks

TARGET_PLAIN, GOAL_LIGHTNING = 0.97, 1.0  # issue 4: tudui / plain >= 0.97; tudui / Lightning: goal >= 1.0


def batches(run: Run, epoch: int):
    """The plain loop's data: shuffled (B, C, H, W) uint8 / (B,) int64 slices of the in-memory tensors."""
    images, targets, bs = run.train_loader.images, run.train_loader.targets, run.cfg.batch_size
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(epoch)).to(images.device)
    for i in range(len(targets) // bs):  # whole batches only, as the trainer's loader does
        idx = order[i * bs:(i + 1) * bs]
        yield images[idx], targets[idx]


def plain_epoch(run: Run, epoch: int) -> int:
    """A hand-written loop: the same step the trainer takes, with nothing around it. Returns images seen."""
    model, opt, crit = run.model, run.optimizer, run.criterion
    model.train()
    seen = 0
    for x, y in batches(run, epoch):
        x = run.prepare(x, train=True)  # the same per-batch augmentation + normalisation as the trainer
        with autocast(run.device, run.cfg.amp):
            loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(opt)
        run.scaler.update()
        run.scheduler.step()
        seen += len(y)
    return seen


def timed(fn, device) -> float:
    C.sync(device)
    t0 = time.perf_counter()
    fn()
    C.sync(device)
    return time.perf_counter() - t0


class InMemory:
    """Lightning's data: the plain loop's batches as an iterable with a length (one pass per epoch)."""

    def __init__(self, run: Run) -> None:
        self.run, self.epoch = run, 0

    def __len__(self) -> int:
        return len(self.run.train_loader.targets) // self.run.cfg.batch_size

    def __iter__(self):
        self.epoch += 1
        return batches(self.run, self.epoch)


def lightning_epochs(run: Run, epochs: int, root: str) -> list[float] | str:
    """Seconds per epoch of lightning.Trainer.fit over `epochs` epochs, or why it could not run."""
    try:
        import lightning as L
    except ImportError:
        return "not installed (pip install lightning)"
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # its start-up banner is not the benchmark's

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = run.model

        def training_step(self, batch, batch_idx):
            x, y = batch
            return run.criterion(self.model(run.prepare(x, train=True)), y)

        def configure_optimizers(self):
            return {"optimizer": run.optimizer, "lr_scheduler": {"scheduler": run.scheduler, "interval": "step"}}

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.times, self.t0 = [], 0.0

        def on_train_epoch_start(self, trainer, module) -> None:
            C.sync(run.device)
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            C.sync(run.device)
            self.times.append(time.perf_counter() - self.t0)

    cuda = run.device.type == "cuda"
    precision = {"bf16": "bf16-mixed", "fp16": "16-mixed", "on": "16-mixed" if cuda else "bf16-mixed"}.get(
        run.cfg.amp, "32-true")  # tudui's --amp (as `auto` settled it), in Lightning's terms
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=epochs, accelerator="gpu" if cuda else "cpu", devices=1, precision=precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer],
                        default_root_dir=root)
    # Lightning keeps the modes modules have at the start (setup's dry forward left them in eval): train mode, as
    # the other loops set, so BatchNorm does the same work everywhere.
    trainer.fit(Module().train(), train_dataloaders=InMemory(run))
    return timer.times


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per contestant, after one warm-up [5]")
    args = p.parse_args()
    repeats = 1 if args.quick else args.repeats
    C.header("loop overhead: tudui's trainer vs a plain PyTorch loop vs Lightning", args.quick)

    with C.workdir(args, prefix="tudui-bench-") as work:
        project = str(work)
        # epochs = warm-up + timed, so each schedule ends exactly where its run does.
        # batch 128 (the recipe at Fashion-MNIST's size) also for --quick's 512 images, where auto would pick 16
        cfg = TrainConfig(data=["fashion-mnist"], epochs=1 + repeats, batch_size=128, project=project, exist_ok=True,
                          data_root=C.quick_data_root(work) if args.quick else None)
        runs = {name: setup(TrainConfig.from_dict(cfg.to_dict() | {"name": name}))
                for name in ("plain", "lightning")}
        # tudui trains with the callbacks `tudui train` gives it (as engine.trainer.fit composes them): the loss
        # guard and, by default, TensorBoard and plots; their per-step work is part of what is measured.
        runs["tudui"] = setup(TrainConfig.from_dict(cfg.to_dict() | {"name": "tudui"}),
                              [FiniteLossGuard(), *default_callbacks(cfg)])
        for cb in runs["tudui"].callbacks:
            cb.on_fit_start(runs["tudui"])
        tudui_run = runs["tudui"]
        n_img = (len(tudui_run.train_loader.targets) // cfg.batch_size) * cfg.batch_size  # images per epoch, all loops
        chosen = tudui_run.cfg  # the model and amp that `auto` settled to
        print(f"model {chosen.model}, {n_img:,} images per epoch in batches of {cfg.batch_size} "
              f"({n_img // cfg.batch_size} steps), optimizer {cfg.optimizer}, schedule {cfg.scheduler}, amp {chosen.amp}, "
              f"device {tudui_run.device}\n", flush=True)

        times: dict[str, list[float] | str] = {"plain": [], "tudui": []}
        for epoch in range(1 + repeats):
            for name, fn in (("plain", lambda: plain_epoch(runs["plain"], epoch)),
                             ("tudui", lambda: train_one_epoch(runs["tudui"], epoch))):
                dt = timed(fn, tudui_run.device)
                print(f"{name} epoch {epoch + 1}: {dt:.2f} s{' (warm-up)' if epoch == 0 else ''}", flush=True)
                times[name].append(dt)
        times["lightning"] = lightning_epochs(runs["lightning"], 1 + repeats, project)

    rate = {name: n_img / C.median(t[1:]) for name, t in times.items() if isinstance(t, list)}
    rows = []
    for name, t in times.items():
        if isinstance(t, str):
            rows.append([name, "", "", t, ""])
            continue
        counted = t[1:]
        rows.append([name, len(counted), f"{rate[name]:,.0f}",
                     f"{n_img / max(counted):,.0f} .. {n_img / min(counted):,.0f}",
                     f"{rate['tudui'] / rate[name]:.3f}"])
    print("\nsteady-state training throughput (median over timed epochs)")
    print(C.table(["loop", "epochs", "images/s", "range", "tudui / this"], rows))

    vs_plain = rate["tudui"] / rate["plain"]
    targets = [["tudui / plain loop >= 0.97", f"{vs_plain:.3f}", C.verdict(vs_plain >= TARGET_PLAIN)]]
    if "lightning" in rate:
        vs_l = rate["tudui"] / rate["lightning"]
        targets.append(["tudui / Lightning >= 1.0 (goal)", f"{vs_l:.3f}", C.verdict(vs_l >= GOAL_LIGHTNING)])
    else:
        targets.append(["tudui / Lightning >= 1.0 (goal)", times["lightning"], C.verdict(None)])
    print("\ntargets (issue 4)")
    print(C.table(["target", "measured", "verdict"], targets))


if __name__ == "__main__":
    main()
