"""`tudui convert FILE --trust --model NAME ...`: a trusted pickle (or plain weights) -> a tudui checkpoint.

The course saves whole models with `torch.save(model, path)`. Loading such a file
unpickles it, and unpickling can run any code the file's author wrote, so tudui
never does it unless told with `--trust`. The converted checkpoint holds only
tensors and plain values (read back with weights_only=True) plus what predict,
eval and export need: architecture, classes and the input spec.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..core.errors import TuduiError
from ..core.checkpoint import FORMAT, PickledObjects, make_checkpoint, read_weights, save_checkpoint, torch_load
from ..data import DataSpec
from ..models import create_model, get_model_info, make_arch


def _load_object(src: Path, trust: bool):
    if src.suffix == ".safetensors":
        return read_weights(src)
    try:
        return torch_load(src)  # weights_only=True: a plain state_dict needs no trust
    except PickledObjects:
        if not trust:
            raise TuduiError(f"{src} is a pickle that can run code when loaded (e.g. a whole model saved with "
                             "torch.save(model)); pass --trust only if you trust whoever made it") from None
    try:
        return torch.load(src, map_location="cpu", weights_only=False)  # the user vouched for this file
    except (AttributeError, ModuleNotFoundError) as e:
        raise TuduiError(f"{src} is a pickled model whose class cannot be found here ({e}). Load it where its "
                         "class is defined and save `model.state_dict()` instead, then convert that file") from None


def _state_dict(obj, src: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        if obj.get("format") == FORMAT:
            raise TuduiError(f"{src} is already a tudui checkpoint")
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if isinstance(inner, dict):
                obj = inner
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise TuduiError(f"{src} holds a {type(obj).__name__}, not a model or a state_dict")


def _fit_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Match names: as saved, or without a common first part (`module.` from DDP, `model1.` in the course's Tudui)."""
    own = model.state_dict().keys()
    if set(state) == set(own):
        return state
    firsts = {k.split(".", 1)[0] for k in state}
    if len(firsts) == 1 and all("." in k for k in state):
        stripped = {k.split(".", 1)[1]: v for k, v in state.items()}
        if set(stripped) == set(own):
            return stripped
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    raise TuduiError(f"the weights do not match --model's layers (missing e.g. {missing[:3]}, unexpected e.g. "
                     f"{unexpected[:3]}); pick the --model with the same architecture (see `tudui models`)")


def convert(src: str | Path, out: str | Path, *, model: str, trust: bool = False, classes: list[str] | None = None,
            num_classes: int | None = None, img_size: int | None = None, channels: int | None = None,
            mean: list[float] | None = None, std: list[float] | None = None, hflip: bool = True) -> dict:
    """Write a tudui checkpoint built from `src`; returns it. Classes are in the model's output order."""

    src, out = Path(src), Path(out)
    if not src.is_file():
        raise TuduiError(f"no such file: {src}")
    info = get_model_info(model)  # a misspelt name fails before any loading
    state = _state_dict(_load_object(src, trust), src)
    if classes is None:
        if num_classes is None:
            raise TuduiError("give the class names in the model's output order with --classes A B C ... "
                             "(or just --num-classes N for names 0..N-1)")
        classes = [str(i) for i in range(num_classes)]
    if num_classes is not None and num_classes != len(classes):
        raise TuduiError(f"--num-classes {num_classes} disagrees with the {len(classes)} --classes given")
    first_conv = next((v for v in state.values() if v.ndim == 4), None)  # (out, in, kH, kW)
    channels = channels or (int(first_conv.shape[1]) if first_conv is not None else 3)
    img_size = img_size or info.default_size
    mean = mean or [0.0] * channels  # the course's ToTensor() without Normalize: pixels in [0, 1]
    std = std or [1.0] * channels
    if len(mean) != channels or len(std) != channels:
        raise TuduiError(f"--mean and --std need {channels} value(s) each (one per channel)")
    net = create_model(model, len(classes), channels, img_size)
    state = _fit_keys(net, state)
    try:
        net.load_state_dict(state)
        with torch.no_grad():
            logits = net.eval()(torch.zeros(1, channels, img_size, img_size))
    except RuntimeError as e:
        raise TuduiError(f"{src} does not fit --model {model} with {len(classes)} classes, {channels} channel(s) "
                         f"at {img_size}px: {str(e).splitlines()[0][:300]}") from None
    if logits.shape != (1, len(classes)):
        raise TuduiError(f"--model {model} gives {logits.shape[1]} outputs but {len(classes)} classes were given")
    spec = DataSpec(list(classes), img_size, channels, [float(m) for m in mean], [float(s) for s in std], hflip)
    ckpt = make_checkpoint(net, make_arch(model, len(classes), channels, img_size), spec.to_dict(), epoch=0,
                           metrics={}, config={}, converted_from=str(src))
    save_checkpoint(ckpt, out)
    return ckpt
