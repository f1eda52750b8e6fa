"""What `auto` settles to for this run: the model (`--model auto`), mixed precision (`--amp auto`) and DataLoader
workers (`--workers auto`).

Each resolver writes the concrete choice back into the config (so config.yaml and `--resume` use it) and returns a
short note for the run's first line.

--amp auto, measured (benchmarks/README.md, Xeon with AMX, 2 cores, training steps, bf16 autocast against fp32):
`fast` at 28 px, batch 128: 1.66x; `fast-wide`: 2.45x; the course's CIFAR-10 net: 2.2x; resnet18 at 64 px, batch 32:
1.42x, at 224 px: 2.8x. But resnet18 at 32 px, batch 64: 1.00x, at 16 px: 0.71x; `fast` at 8 px, batch 64: 0.97x; and
mobilenet_v3_small 0.6x (its depthwise convolutions gain nothing from AMX and pay for the conversions). What decides
is the arithmetic per weight: each step converts every weight to bf16 (cost ~ parameters) and gains on the multiply-
adds (~ multiply-adds per image x batch). So on a CPU: bf16 where the CPU has native bf16 (avx512_bf16 or amx_bf16),
every convolution is dense (groups == 1) and a step does at least AMP_MIN_INTENSITY multiply-adds per weight (no gain
at 368, 1.42x at 424: benchmarks/README.md has the table). On CUDA: bf16 where supported, else fp16 (with loss
scaling).

--model auto: `fast-wide` (2.8x the multiply-adds of `fast`, ~0.5 points more accurate on Fashion-MNIST) where the
device runs it natively in bf16 or fp16 (a GPU, a CPU with AMX: there it trains as fast as `fast` in fp32), else
`fast`, so the default's seconds per epoch stay about the same on every machine.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.device import World, auto_workers, cpu_bf16_flags
from ..models.summary import summarize_model

AMP_MIN_INTENSITY = 400  # multiply-adds per weight per training step (per image x batch / parameters)


def _dense_macs(model: nn.Module, spec) -> tuple[int, bool]:
    """(multiply-adds per image, whether every convolution is dense, i.e. groups == 1)."""
    dense = all(m.groups == 1 for m in model.modules() if isinstance(m, nn.Conv2d))
    try:
        macs = summarize_model(model, (spec.channels, spec.img_size, spec.img_size)).macs
    except Exception:  # noqa: BLE001 - a user model the shape pass cannot follow: no bf16 guess
        macs = 0
    return macs, dense


def resolve_model(cfg, device: torch.device) -> str | None:
    """Settle cfg.model 'auto' to a registered name; returns the note for the first line (None when not auto)."""
    if not (isinstance(cfg.model, str) and cfg.model == "auto"):
        return None
    native = device.type == "cuda" or (device.type == "cpu" and "amx_bf16" in cpu_bf16_flags())
    cfg.model = "fast-wide" if native else "fast"
    why = {"cuda": "CUDA", "cpu": "CPU with AMX" if native else "CPU without AMX"}.get(device.type, device.type)
    return f"model {cfg.model} (auto: {why})"


def resolve_amp(cfg, model: nn.Module, spec, device: torch.device) -> str:
    """Settle cfg.amp ('auto' -> 'bf16', 'fp16' or 'off'); returns the note for the first line."""
    if cfg.amp != "auto":
        return f"amp {cfg.amp}"
    if device.type == "cuda":
        cfg.amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return f"amp {cfg.amp} (auto: CUDA)"
    if device.type != "cpu":
        cfg.amp = "off"
        return f"amp off (auto: {device.type})"
    flags = cpu_bf16_flags()
    if not flags:
        cfg.amp = "off"
        return "amp off (auto: no native bf16 on this CPU)"
    macs, dense = _dense_macs(model, spec)
    if not dense:
        cfg.amp = "off"
        return "amp off (auto: grouped convolutions gain nothing from bf16)"
    params = max(1, sum(p.numel() for p in model.parameters()))  # autocast converts frozen weights too
    intensity = macs * cfg.batch_size / params
    if intensity < AMP_MIN_INTENSITY:
        cfg.amp = "off"
        return (f"amp off (auto: {intensity:.0f} multiply-adds per weight per step is too few to gain from bf16; "
                f"from {AMP_MIN_INTENSITY})")
    cfg.amp = "bf16"
    return f"amp bf16 (auto: CPU has {'/'.join(flags)}, {intensity:.0f} multiply-adds per weight per step)"


def resolve_workers(cfg, data, w: World) -> tuple[int, str | None]:
    """(DataLoader workers, a note when some split is decoded from its files every epoch, else None)."""
    n = auto_workers(cfg.workers, w.local_size)
    from_files = any(s is not None and s.images is None for s in (data.train, data.val, data.test))
    if not from_files:
        return n, None
    return n, f"{n} DataLoader worker(s)" + (" (auto)" if cfg.workers == "auto" else "")
