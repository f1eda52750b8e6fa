"""The 60-minute blitz: where tensors can go, an MNIST CNN trained with Adam, the test, the table of losses.

The blitz normalises MNIST with Normalize((0.5,), (0.5,)), trains a two-convolution CNN with Adam and tests it.
Tensors and autograd are PyTorch itself (tudui calls loss.backward() for you); `tudui info` says which devices
your tensors can use. Here on Fashion-MNIST, MNIST's drop-in replacement (offline), or any --data.

    python examples/course/05_blitz.py [--data fashion-mnist] [--out runs/course] [--epochs 3]
"""
from __future__ import annotations

import argparse

import tudui
from tudui.cli import main as tudui_cli

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default="fashion-mnist", help="a dataset name or folder [default: fashion-mnist]")
parser.add_argument("--out", default="runs/course", help="project folder [default: runs/course]")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--subset", type=int, default=None, help="train on N images only (a seeded random choice)")
args = parser.parse_args()

assert tudui_cli(["info"]) == 0  # torch version, CUDA/MPS devices, CPU threads, where each dataset is

# The blitz's CNN and recipe: Conv 5x5 -> ReLU -> MaxPool twice, Linear; Adam lr 0.001; log_softmax + NLLLoss
# (the blitz's table of losses: cross-entropy is log_softmax followed by NLLLoss, so --loss nll trains the same).
# preset="blitz" is the blitz's routine (mnist-cnn, batch 50, Adam lr 0.001, no schedule, decay, smoothing,
# augmentation or TTA, fp32); the options beside it win: the loss, the blitz's Normalize(0.5, 0.5), the epochs.
result = tudui.train(data=args.data, preset="blitz", loss="nll", mean=[0.5], std=[0.5], channels=1,
                     epochs=args.epochs, subset=args.subset, project=args.out, name="blitz")

# The test: every test image counted once, per-class precision/recall next to the overall accuracy.
split = "test" if result.test else "val"  # an exported folder may hold train/ and val/ only
metrics = tudui.evaluate(str(result.best), data=[args.data], split=split)
print(f"{split}: top-1 {metrics['top1']:.2%}, macro-F1 {metrics['macro_f1']:.3f} on {metrics['n']:,} images")
worst = min(zip(metrics["per_class"]["recall"], metrics["classes"]))
print(f"hardest class: {worst[1]} (recall {worst[0]:.2%})")
