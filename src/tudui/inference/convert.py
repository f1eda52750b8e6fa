"""`tudui convert FILE --trust --model NAME ...`: a trusted pickle (or plain weights) -> a tudui checkpoint.

The course saves whole models with `torch.save(model, path)`. Loading such a file
unpickles it, and unpickling can run any code the file's author wrote, so tudui
never does it unless told with `--trust`. The converted checkpoint holds only
tensors and plain values (read back with weights_only=True) plus what predict,
eval and export need: architecture, classes and the input spec.
"""
from __future__ import annotations

import pickle
import types
from pathlib import Path

import torch
import torch.nn as nn

from ..core.errors import TuduiError
from ..core.options import option_text
from ..core.checkpoint import (FORMAT, PickledObjects, check_data, make_checkpoint, read_weights, save_checkpoint,
                               torch_load)
from ..data import DataSpec
from ..models import create_model, get_model_info, make_arch
from ..models.summary import find_fitting_input, shape_str
from ..models.user import parse_model_args, source_record


class MissingClass(nn.Module):
    """Stands in for a pickled module class that cannot be imported here (e.g. the course's `Tudui`, defined in
    the script that ran `torch.save(tudui, "tudui_9.pth")` as __main__). Unpickling an nn.Module restores its
    __dict__ (submodules, parameters, buffers), so the module tree and every weight come back without the
    class's code; only `forward` is missing, and tudui maps the weights onto a model it can build."""

    def forward(self, *args, **kwargs):
        raise TuduiError(f"{type(self).__name__}'s code is not available here; convert its weights instead")


def _unpickle_without_classes(src: Path) -> tuple[object, list[str]]:
    """torch.load(src) with stand-ins for classes that cannot be found; returns (object, names stood in for)."""
    missing: list[str] = []

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            try:
                return super().find_class(module, name)
            except (AttributeError, ImportError):
                missing.append(f"{module}.{name}")
                return type(name, (MissingClass,), {"__module__": module, "__qualname__": name})

    # torch.load subclasses `pickle_module.Unpickler` to handle its storages; this one adds the fallback.
    shim = types.ModuleType("tudui_pickle")
    shim.Unpickler, shim.load, shim.__name__ = Unpickler, lambda f, **kw: Unpickler(f, **kw).load(), "pickle"
    obj = torch.load(src, map_location="cpu", weights_only=False, pickle_module=shim)  # the user vouched (--trust)
    return obj, missing


def _load_object(src: Path, trust: bool):
    if src.suffix == ".safetensors":
        return read_weights(src)
    try:
        return torch_load(src)  # weights_only=True: a plain state_dict needs no trust
    except PickledObjects:
        if not trust:
            raise TuduiError(f"{src} is a pickle that can run code when loaded (e.g. a whole model saved with "
                             "torch.save(model)); pass --trust only if you trust whoever made it") from None
    obj, missing = _unpickle_without_classes(src)
    if missing:
        print(f"note: {src} pickles class(es) not importable here ({', '.join(sorted(set(missing)))}); "
              "their module tree and weights were read without their code", flush=True)
    return obj


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


def _fit_keys(model: nn.Module, state: dict[str, torch.Tensor],
              label: str) -> tuple[dict[str, torch.Tensor], list[tuple[str, str, tuple]]]:
    """(state under the model's own names, mapping [(file name, model name, shape)]).

    Names are matched as saved, or without a common first part (`module.` from DDP, `model1.` in the course's
    Tudui); otherwise tensor by tensor in order, which needs the same number of tensors with the same shapes
    (the same layers in the same order, whatever they are called).
    """
    own = model.state_dict()
    if set(state) == set(own):
        return state, [(k, k, tuple(v.shape)) for k, v in state.items()]
    firsts = {k.split(".", 1)[0] for k in state}
    if len(firsts) == 1 and all("." in k for k in state):
        stripped = {k.split(".", 1)[1]: k for k in state}
        if set(stripped) == set(own):
            return {k: state[old] for k, old in stripped.items()}, \
                [(old, k, tuple(state[old].shape)) for k, old in stripped.items()]
    src, dst = list(state.items()), list(own.items())
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst)):
        if sv.shape != dv.shape:
            raise TuduiError(f"the weights do not match {label}: tensor {i + 1} is {sk} {tuple(sv.shape)} in "
                             f"the file but {dk} {tuple(dv.shape)} in the model. Pick the --model with the same "
                             "layers in the same order (and check --img-size, --channels, the class count)")
    if len(src) != len(dst):
        raise TuduiError(f"the file has {len(src)} tensors, {label} has {len(dst)}; pick the --model with the same "
                         "layers (see `tudui models`, or your own file.py:Name)")
    return {dk: sv for (_, sv), (dk, _) in zip(src, dst)}, [(sk, dk, tuple(sv.shape)) for (sk, sv), (dk, _) in
                                                          zip(src, dst)]


def convert(src: str | Path, out: str | Path, *, model: str, trust: bool = False, classes: list[str] | None = None,
            num_classes: int | None = None, img_size: int | None = None, channels: int | None = None,
            mean: list[float] | None = None, std: list[float] | None = None, hflip: bool = True,
            model_args: list[str] | dict | None = None, log=print) -> dict:
    """Write a tudui checkpoint built from `src`; returns it. Classes are in the model's output order.

    `model` is a registered name or your own 'file.py:Name' (recorded so predict/export rebuild it). The
    mapping of the file's tensors onto the model's is printed through `log`.
    """

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
    args = parse_model_args(model_args)
    mean = mean or [0.0] * channels  # the course's ToTensor() without Normalize: pixels in [0, 1]
    std = std or [1.0] * channels
    if len(mean) != channels or len(std) != channels:
        raise TuduiError(f"--mean and --std need {channels} value(s) each (one per channel)")
    net = create_model(model, len(classes), channels, img_size, **args)
    state, mapping = _fit_keys(net, state, f"--model {model}")
    if log:
        log("tensor mapping (file -> model):\n" + "\n".join(f"  {a} -> {b}  {'x'.join(map(str, s))}"
                                                            for a, b, s in mapping))
    loaded = False
    try:
        net.load_state_dict(state)
        loaded = True
        with torch.no_grad():
            logits = net.eval()(torch.zeros(1, channels, img_size, img_size))
    except RuntimeError as e:
        fit = find_fitting_input(net, (channels, img_size, img_size)) if loaded else None  # the weights fit: the input?
        hint = f"; the model takes {shape_str(fit)} inputs: add {option_text('channels', fit[0])} " \
            f"{option_text('img_size', fit[1])}" \
            if fit and fit[1] == fit[2] else ""
        raise TuduiError(f"{src} does not fit --model {model} with {len(classes)} classes, {channels} channel(s) "
                         f"at {img_size}px: {str(e).splitlines()[0][:300]}{hint}") from None
    if logits.shape != (1, len(classes)):
        raise TuduiError(f"--model {model} gives {logits.shape[1]} outputs but {len(classes)} classes were given")
    spec = DataSpec(list(classes), img_size, channels, [float(m) for m in mean], [float(s) for s in std], hflip)
    check_data(spec.to_dict(), out)  # e.g. --std 0: refused now, not by every later predict
    arch = make_arch(model, len(classes), channels, img_size, **args)
    if info.family == "user":  # your own file: recorded so that predict, export and serve can rebuild it
        arch["source"] = source_record(model, args, out.parent)
    ckpt = make_checkpoint(net, arch, spec.to_dict(), epoch=0, metrics={}, config={}, converted_from=str(src))
    save_checkpoint(ckpt, out)
    return ckpt
