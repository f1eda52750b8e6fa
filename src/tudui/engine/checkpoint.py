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
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import TuduiError

FORMAT = "tudui.checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically: a temp file in the same folder, fsync, rename.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        if os.environ.get("TUDUI_TEST_SLOW_SAVE"):  # test hook: seconds to wait before the rename (kill-during-save test)
            time.sleep(float(os.environ["TUDUI_TEST_SLOW_SAVE"]))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    if not path.is_file():
        raise TuduiError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise TuduiError(f"{path} is empty (0 bytes); it is not a checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # not a pickle of objects at all: garbage or another format
            raise TuduiError(f"{path} is not a readable PyTorch file (its content is not what torch.save writes)") from e
        raise TuduiError(
            f"{path} contains pickled Python objects (for example a whole model saved with torch.save(model)); "
            "tudui loads only weights, because unpickling can run arbitrary code. If you trust the file, "
            f"convert it with `tudui convert {path} --trust`") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise TuduiError(f"{path} is not a readable PyTorch file ({str(e).splitlines()[0][:200]})") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a tudui checkpoint onto `map_location` (CPU by default: GPU-saved files load anywhere)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise TuduiError(f"{path} is a folder without best.pt or last.pt")
    ckpt = _torch_load(path, map_location)
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
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise TuduiError("reading .safetensors needs the safetensors package: pip install 'tudui[export]'") from None
        return load_file(str(path))
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TuduiError(f"{path} holds no state_dict (a mapping of layer names to tensors)")
    return obj


def build_from_checkpoint(ckpt: dict[str, Any]):
    """(model in eval mode with the checkpoint's weights, DataSpec)."""
    from ..data.transforms import DataSpec
    from ..models import create_model

    a = ckpt["arch"]
    model = create_model(a["name"], num_classes=a["num_classes"], in_channels=a["in_channels"],
                         img_size=a["img_size"], **a.get("kwargs", {}))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise TuduiError(f"checkpoint {ckpt.get('path')} does not match architecture {a['name']}: "
                         f"{str(e).splitlines()[0]}") from e
    return model.eval(), DataSpec.from_dict(ckpt["data"])
