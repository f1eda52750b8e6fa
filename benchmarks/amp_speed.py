"""bf16 autocast against fp32: training steps per second on this CPU, and whether `--amp auto` picks the faster.

The `--amp auto` rule (engine/choices.py) was drawn from this table on one CPU; run it on another to check it holds
there. Auto's choice is made as a run makes it, with the figures kept in $TUDUI_CACHE/bf16_speedup.json (the CPU's,
and below 400 multiply-adds per weight per step each model's own): delete the file to see them measured afresh. Each
case builds the registered model, channels-last, AdamW, cross-entropy, random inputs of the given shape, and times
training steps in fp32 and in bf16 autocast (after warm-up steps) in five rounds that alternate the two, reporting the
medians (steps of a few milliseconds drift with the machine). The verdict per case: auto's choice is no more than 10%
slower than the faster of the two (a CPU without native bf16 skips the bf16 column, as auto does).

    python benchmarks/amp_speed.py            # about 1.5 minutes on a 2-core CPU
"""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import _common as C
import torch
import torch.nn as nn

from tudui.engine.choices import resolve_amp
from tudui.models.registry import create_model
from tudui.models.summary import summarize_model

# (model, channels, pixels, batch): the nets tudui picks by default and the course's, then where the rule turns
CASES = [
    ("fast", 1, 28, 128), ("fast-mlp", 1, 28, 128), ("fast-wide", 1, 28, 128), ("fast-res", 1, 28, 128),
    ("cifar-net", 3, 32, 64), ("mnist-cnn", 1, 28, 64), ("fast", 1, 14, 128), ("fast", 3, 8, 64),
    ("resnet18", 3, 64, 32), ("resnet18", 3, 32, 64), ("resnet18", 3, 16, 64),
]
SLACK = 0.90  # auto's pick may be up to 10% slower than the faster: one case's ratio moved by +-10% between runs here


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def rate(step, steps: int, batch: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def compare(model: nn.Module, x: torch.Tensor, y: torch.Tensor, native: bool, rounds: int, seconds: float):
    """(fp32 images/s, bf16 images/s or None): medians over `rounds` rounds, each timing a block of fp32 steps and a
    block of bf16 steps (order alternating), so a drift in the machine's speed falls on both alike."""
    steps = {False: make_step(model, x, y, False), True: make_step(model, x, y, True)}
    for s in steps.values():  # oneDNN picks its kernels on the first calls
        rate(s, 3, len(x))
    n = max(4, int(seconds / rounds * rate(steps[False], 2, len(x)) / len(x)))  # steps per block
    got = {False: [], True: []}
    for r in range(rounds):
        for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
            if bf16 and not native:
                continue
            got[bf16].append(rate(steps[bf16], n, len(x)))
    return C.median(got[False]), (C.median(got[True]) if native else None)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    C.header("bf16 autocast against fp32, training steps (benchmarks/amp_speed.py)", args.quick)
    os.environ.pop("TUDUI_BF16_SPEEDUP", None)  # auto's own measurement is what this checks, not a pinned figure
    native = bool(C.cpu_bf16_flags())
    rows, ok_all = [], True
    for name, ch, px, batch in CASES[:3] if args.quick else CASES:
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, in_channels=ch, img_size=px).to(memory_format=torch.channels_last)
        spec = SimpleNamespace(channels=ch, img_size=px)  # what resolve_amp reads of a DataSpec
        cfg = SimpleNamespace(batch_size=batch, amp="auto", channels_last=True)  # and of a TrainConfig
        note = resolve_amp(cfg, model, spec, torch.device("cpu"))
        # the quantity the rule compares with AMP_MIN_INTENSITY: multiply-adds per image x batch / parameters
        intensity = summarize_model(model, (ch, px, px)).macs * batch / sum(p.numel() for p in model.parameters())
        x = torch.randn(batch, ch, px, px).to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,))
        # about 3 s of fp32 steps per case, in 5 rounds
        fp32, bf16 = compare(model, x, y, native, 1 if args.quick else 5, 0.2 if args.quick else 3.0)
        best = max(fp32, bf16 or 0.0)
        picked = bf16 if cfg.amp == "bf16" else fp32
        ok = picked >= SLACK * best
        ok_all &= ok
        rows.append([f"{name}, {ch}x{px}x{px}, {batch}", f"{intensity:.0f}", f"{fp32:,.0f}",
                     f"{bf16:,.0f}" if bf16 else "-", f"{bf16 / fp32:.2f}" if bf16 else "-", cfg.amp, C.verdict(ok)])
        print(f"  {rows[-1][0]}: fp32 {fp32:,.0f} img/s, bf16 {rows[-1][3]} img/s, {note}", flush=True)
    print()
    print(C.table(["model, input, batch", "multiply-adds per weight per step", "fp32 img/s", "bf16 img/s",
                   "bf16 / fp32", "--amp auto", f"auto within {1 - SLACK:.0%} of the faster"], rows))
    print(f"\nverdict: --amp auto picks the faster precision in every case: {C.verdict(ok_all)}")


if __name__ == "__main__":
    main()
