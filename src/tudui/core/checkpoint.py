"""Checkpoints: atomic writes, safe loads, and everything needed to use the model.

A checkpoint is a dict of plain types and tensors (never a pickled model), read
with `torch.load(weights_only=True)` so a file from a stranger cannot run code:
  format, format_version   identify a tudui checkpoint
  model                    state_dict (saved from the unwrapped module: no `module.` prefix)
  arch                     {name, num_classes, in_channels, img_size, kwargs} for create_model
  data                     DataSpec: classes, img_size, channels, mean, std, hflip, tta
  epoch                    epochs completed
  optimizer, scheduler, scaler, trainer   state to resume training exactly
  metrics, config, versions
"""
from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from .errors import TuduiError
from .files import atomic_path, versions

FORMAT = "tudui.checkpoint"
FORMAT_VERSION = 1
INSTALL_EXPORT = "pip install 'tudui[export]'"


def import_safetensors():
    """safetensors.torch, or a TuduiError saying how to install it (an optional dependency)."""
    try:
        import safetensors.torch
    except ImportError:
        raise TuduiError(f"reading or writing .safetensors needs the safetensors package: {INSTALL_EXPORT}") from None
    return safetensors.torch


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically (files.atomic_path): a crash leaves the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
        if os.environ.get("TUDUI_TEST_SLOW_SAVE"):  # test hook: seconds to wait before the rename (kill-during-save)
            time.sleep(float(os.environ["TUDUI_TEST_SLOW_SAVE"]))


def make_checkpoint(model: torch.nn.Module, arch: dict, data: dict, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict every writer uses: format tag, weights in the standard layout, arch, DataSpec, extras."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            # contiguous: channels-last weights are saved in the standard layout every reader expects
            "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "arch": arch, "data": data, "versions": versions(), **extra}


class PickledObjects(TuduiError):
    """The file holds pickled Python objects (e.g. torch.save(model)), which weights-only loading refuses."""


def torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    if not path.is_file():
        raise TuduiError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise TuduiError(f"{path} is empty (0 bytes); it is not a checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # not a pickle of objects at all: garbage or another format
            raise TuduiError(f"{path} is not a readable PyTorch file (its content is not what torch.save writes)") from e
        raise PickledObjects(
            f"{path} contains pickled Python objects (for example a whole model saved with torch.save(model)); "
            "tudui loads only weights, because unpickling can run arbitrary code. If you trust the file, "
            f"convert it with `tudui convert {path} --trust`") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise TuduiError(f"{path} is not a readable PyTorch file ({str(e).splitlines()[0][:200]})") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", prefer: str = "best") -> dict[str, Any]:
    """Load a tudui checkpoint onto `map_location` (CPU by default: GPU-saved files load anywhere).

    A run directory means its best.pt (the weights to use), or with prefer="last" its last.pt (the state to
    resume from); the other one is taken when the preferred one is missing.
    """
    path = Path(path)
    if path.is_dir():
        names = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        for name in names:
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise TuduiError(f"{path} is a folder without best.pt or last.pt")
    ckpt = torch_load(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TuduiError(f"{path} is not a tudui checkpoint (a plain state_dict can be used as initial weights "
                         "with `tudui train --weights FILE`)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise TuduiError(f"{path} was written by a newer tudui (format {ckpt['format_version']}); upgrade tudui")
    ckpt["path"] = str(path)
    return ckpt


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a weights file: .safetensors, a plain state_dict, a tudui checkpoint, or {'state_dict': ...}."""
    path = Path(path)
    if not path.is_file():
        raise TuduiError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return import_safetensors().load_file(str(path))
    obj = torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TuduiError(f"{path} holds no state_dict (a mapping of layer names to tensors)")
    return obj
