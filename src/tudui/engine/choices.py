"""What `auto` settles to for this run: mixed precision (`--amp auto`) and DataLoader workers (`--workers auto`).

Each resolver writes the concrete choice back into the config (so config.yaml and `--resume` use it) and returns a
short note for the run's first line.

--amp auto, measured (benchmarks/README.md, Xeon with AMX, 2 cores): bf16 autocast trains resnet18 at 224 px 2.8x
faster than fp32, and mobilenet_v3_small 0.6x as fast (its depthwise convolutions gain nothing from AMX and pay
for the conversions). So on a CPU: bf16 where the CPU has native bf16 (avx512_bf16 or amx_bf16) and the model is
dense convolutions (no grouped ones) with at least AMP_MIN_MACS multiply-adds per image; small nets such as `fast`
stay in fp32, so the built-in recipes do not change. On CUDA: bf16 where supported, else fp16 (with loss scaling).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.device import World, auto_workers, cpu_bf16_flags
from ..models.summary import summarize_model

AMP_MIN_MACS = 100e6  # multiply-adds per image from which bf16 pays on a CPU (resnet18 at 64 px: 150 M)


def _dense_macs(model: nn.Module, spec) -> tuple[int, bool]:
    """(multiply-adds per image, whether every convolution is dense, i.e. groups == 1)."""
    dense = all(m.groups == 1 for m in model.modules() if isinstance(m, nn.Conv2d))
    try:
        macs = summarize_model(model, (spec.channels, spec.img_size, spec.img_size)).macs
    except Exception:  # noqa: BLE001 - a user model the shape pass cannot follow: no bf16 guess
        macs = 0
    return macs, dense


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
    if macs < AMP_MIN_MACS:
        cfg.amp = "off"
        return f"amp off (auto: {macs / 1e6:.0f} M multiply-adds per image is too few to gain from bf16)"
    cfg.amp = "bf16"
    return f"amp bf16 (auto: CPU has {'/'.join(flags)}, {macs / 1e9:.2f} G multiply-adds per image)"


def resolve_workers(cfg, data, w: World) -> tuple[int, str | None]:
    """(DataLoader workers, a note when some split is decoded from its files every epoch, else None)."""
    n = auto_workers(cfg.workers, w.local_size)
    from_files = any(s is not None and s.images is None for s in (data.train, data.val, data.test))
    if not from_files:
        return n, None
    return n, f"{n} DataLoader worker(s)" + (" (auto)" if cfg.workers == "auto" else "")
