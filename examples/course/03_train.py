"""Lessons: losses and backward, optimizers, the complete training routine, TensorBoard, GPU training.

The course's routine, option for option: the CIFAR-10 net, CrossEntropyLoss, SGD with lr 0.01, batch 64,
train_loss to TensorBoard every 100 steps, test loss and accuracy after every epoch, the model saved every epoch,
on the GPU when there is one. Here on Fashion-MNIST (offline, 28x28 resized to the net's 32x32), or on any
--data tudui reads (a folder written by examples/course/01_data.py, for one).

    python examples/course/03_train.py [--data fashion-mnist] [--out runs/course] [--epochs 5] [--subset N]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

import tudui

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default="fashion-mnist", help="a dataset name or folder [default: fashion-mnist]")
parser.add_argument("--out", default="runs/course", help="project folder for the run directories [default: runs/course]")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--subset", type=int, default=None, help="train on N images only (a seeded random choice)")
args = parser.parse_args()

# The routine. Everything the course writes by hand (the loops, model.train()/eval(), torch.no_grad(), the
# accuracy count, moving model and data with .to(device), saving) happens inside tudui.train; these options turn
# off what tudui adds by default so the run is the course's own: preset="course" is the course's routine (cifar-net,
# batch 64, plain SGD at lr 0.01 without momentum or schedule, no weight decay, label smoothing, augmentation or TTA,
# fp32); options given beside a preset win, here the course's CIFAR-10 input size.
course = dict(preset="course", img_size=32, log_every=100, device="auto")
result = tudui.train(data=args.data, epochs=args.epochs, subset=args.subset, project=args.out,
                     name="routine", **course)

# What the course prints per epoch is in results.csv (one row per epoch); test accuracy of the best checkpoint
# is counted over every test image, once (the course divides a summed tensor by the dataset size).
for row in result.history:
    print(f"epoch {row['epoch']:.0f}: train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
          f"val top-1 {row['val_top1']:.2%}")
split, final = ("test", result.test) if result.test else ("val", result.val)  # a folder may have no test/
print(f"best checkpoint {result.best}: {split} top-1 {final['top1']:.2%}")
env = yaml.safe_load((result.run_dir / "env.yaml").read_text(encoding="utf-8"))
print(f"trained on {env['device']} (GPU when available: --device auto)")

# TensorBoard: the run directory holds the event files the course writes with SummaryWriter (step/train_loss
# every 100 steps, epoch/val_loss, epoch/val_top1, the first batch of images, the graph). `tudui board
# runs/course` opens them; here they are read back.
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

events = EventAccumulator(str(result.run_dir))
events.Reload()
print("TensorBoard tags:", ", ".join(sorted(events.Tags()["scalars"])))
assert [e.step for e in events.Scalars("epoch/val_top1")] == list(range(1, args.epochs + 1))

# Losses: the course tries L1Loss, MSELoss and CrossEntropyLoss. For classification cross-entropy is the one
# to train with; --loss mse/l1 compare them on one-hot targets (softmax outputs), here after one epoch each
# (the cross-entropy run's first epoch is the routine's: same seed, same data order).
scores = {"cross-entropy": result.history[0]["val_top1"]}
for loss in ("mse", "l1"):
    r = tudui.train(data=args.data, epochs=1, subset=args.subset, project=args.out, name=f"loss-{loss}",
                    plots=False, tensorboard=False, **(course | {"loss": loss}))
    scores[loss] = r.val["top1"]
print("one epoch, val top-1 by loss:", ", ".join(f"{k} {v:.2%}" for k, v in scores.items()))
print("pictures:", ", ".join(p.name for p in sorted(Path(result.run_dir).glob("*.png"))))
