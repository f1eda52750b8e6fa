"""`tudui summary`: what each layer does to the shape of one input, and why.

One forward pass of a single (1, C, H, W) input with hooks on every leaf module
records each layer's output shape, parameters and multiply-adds. For Conv2d,
MaxPool2d and AvgPool2d the output size is also worked out with PyTorch's formula
(the one the course uses to derive padding=2 for the CIFAR-10 net):

    H_out = floor((H + 2p - d(k - 1) - 1) / s + 1)      (ceil with ceil_mode=True)

with ceil_mode one window fewer when the last would start in the right padding (PyTorch drops it; a pooling of
8 by kernel 1, stride 2 gives 4, not ceil(4.5) = 5).

When the input does not fit (a Linear expecting 1024 features receives 576), the
error names the layer and both sizes, and suggests an input size that fits, found by
trying sizes near the given one. The passes run on PyTorch's "meta" device (shapes
only, no memory or arithmetic), so even large models and the size search are quick.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..core.console import table
from ..core.errors import TuduiError


@dataclass
class LayerRow:
    index: int  # 1-based order of execution
    name: str  # qualified module name ("features.0")
    kind: str  # class name ("Conv2d")
    in_shape: tuple[int, ...]  # without the batch dimension
    out_shape: tuple[int, ...]
    params: int
    macs: int  # multiply-adds for one input
    arithmetic: list[str] = field(default_factory=list)  # H_out/W_out formulas with numbers filled in


@dataclass
class ModelSummary:
    input_shape: tuple[int, ...]  # (C, H, W)
    rows: list[LayerRow]
    params: int
    trainable: int
    macs: int
    size_mb: float  # parameters + buffers, 10^6 bytes

    def to_dict(self) -> dict:
        return {"input": list(self.input_shape), "params": self.params, "trainable": self.trainable,
                "macs": self.macs, "size_mb": self.size_mb,
                "layers": [{"index": r.index, "name": r.name, "type": r.kind, "output": list(r.out_shape),
                            "params": r.params, "macs": r.macs, "arithmetic": r.arithmetic} for r in self.rows]}

    def table(self) -> str:
        rows = [["", "input", "", shape_str(self.input_shape), "", "", ""]]
        rows += [[r.index, r.name, r.kind, shape_str(r.out_shape), f"{r.params:,}", f"{r.macs:,}",
                  "; ".join(r.arithmetic)] for r in self.rows]
        text = table(["#", "layer", "type", "output (CxHxW)", "params", "mult-adds", "output size arithmetic"],
                     rows, "><<<>><")
        totals = (f"parameters: {self.params:,} ({self.trainable:,} trainable)\n"
                  f"multiply-adds per image: {self.macs:,} ({self.macs / 1e6:.2f} M; Conv and Linear layers)\n"
                  f"size of parameters and buffers: {self.size_mb:.2f} MB")
        return text + "\n\n" + totals


def shape_str(shape) -> str:
    return "x".join(str(s) for s in shape)


def parse_input(text: str) -> tuple[int, int, int]:
    """'1x28x28' -> (1, 28, 28); '28' -> (3, 28, 28) is not guessed: channels must be given."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*,]\s*(\d+)\s*[xX*,]\s*(\d+)\s*", text or "")
    if not m or min(int(g) for g in m.groups()) < 1:
        raise TuduiError(f"--input must be CxHxW with positive numbers, for example 1x28x28 or 3x32x32; got {text!r}")
    c, h, w = (int(g) for g in m.groups())
    return c, h, w


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def size_arithmetic(module: nn.Module, in_hw: tuple[int, int]) -> list[str]:
    """The output-size formula of a Conv2d/MaxPool2d/AvgPool2d with `in_hw` = (H, W) filled in; [] for others."""
    if not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        return []
    k, s = _pair(module.kernel_size), _pair(module.stride if module.stride is not None else module.kernel_size)
    if isinstance(module, nn.Conv2d) and isinstance(module.padding, str):
        return [f"padding='{module.padding}'" + (" keeps H and W" if module.padding == "same" else " adds none")]
    p = _pair(module.padding)
    d = _pair(getattr(module, "dilation", 1))  # AvgPool2d has no dilation: d = 1
    rnd = "ceil" if getattr(module, "ceil_mode", False) else "floor"
    lines = []
    for axis, i in (("H", 0), ("W", 1)):
        x = in_hw[i]
        out = (x + 2 * p[i] - d[i] * (k[i] - 1) - 1) / s[i] + 1
        out = math.ceil(out) if rnd == "ceil" else math.floor(out)
        formula = f"{rnd}(({x} + 2*{p[i]} - {d[i]}*({k[i]}-1) - 1)/{s[i]} + 1)"
        if rnd == "ceil" and (out - 1) * s[i] >= x + p[i]:  # the last window would start in the right padding
            lines.append(f"{axis}_out = {formula} - 1 = {out - 1} (no window starts in the right padding)")
        else:
            lines.append(f"{axis}_out = {formula} = {out}")
    if in_hw[0] == in_hw[1] and k[0] == k[1] and s[0] == s[1] and p[0] == p[1] and d[0] == d[1]:
        return [lines[0].replace("H_out", "H_out = W_out", 1)]
    return lines


def _macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Multiply-adds for one input (batch of 1)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return out[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return out[0].numel() * module.in_features
    return 0


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        return _first_tensor(list(obj.values()))
    return None


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not list(m.children()) and n != ""] or [("model", model)]


def _shape_model(model: nn.Module) -> nn.Module:
    """A copy on the meta device (shapes only); the caller's model and its weights are untouched."""
    return copy.deepcopy(model).to("meta").eval()


def _forward(model: nn.Module, shape: tuple[int, ...], record: bool):
    """Run (1, *shape) through `model` (already on meta). Returns (rows, failure); failure = (name, module, input,
    exception) for the leaf that raised (name None when the failure was outside any leaf)."""
    rows: list[LayerRow] = []
    pending: dict[int, tuple[str, nn.Module, tuple]] = {}
    order: list[int] = []
    handles = []

    def pre(name):
        def hook(mod, args):
            t = _first_tensor(args)
            pending[id(mod)] = (name, mod, tuple(t.shape) if t is not None else ())
            order.append(id(mod))
        return hook

    def post(name):
        def hook(mod, args, out):
            _, _, in_shape = pending.pop(id(mod), (name, mod, ()))
            if not record:
                return
            o = _first_tensor(out)
            t = _first_tensor(args)
            if o is None:
                return
            hw = tuple(in_shape[-2:]) if len(in_shape) == 4 else None
            rows.append(LayerRow(len(rows) + 1, name, type(mod).__name__, tuple(in_shape[1:]), tuple(o.shape[1:]),
                                 sum(p.numel() for p in mod.parameters(recurse=False)),
                                 _macs(mod, t, o) if t is not None else 0,
                                 size_arithmetic(mod, hw) if hw else []))
        return hook

    for name, mod in _leaves(model):
        handles.append(mod.register_forward_pre_hook(pre(name)))
        handles.append(mod.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, device="meta"))
        return rows, None
    except Exception as e:  # any shape error, whatever its type
        culprit = next((pending[i] for i in reversed(order) if i in pending), None)
        return rows, (culprit, e)
    finally:
        for h in handles:
            h.remove()


def fits(model: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether `model` (a meta-device copy) accepts a (1, *shape) input."""
    return _forward(model, shape, record=False)[1] is None


def find_fitting_input(model: nn.Module, shape: tuple[int, int, int], max_tries: int = 600) -> tuple | None:
    """The input (C, H, W) nearest to `shape` that the model accepts: same aspect ratio, channels as given, then
    3 and 1; None when none of the `max_tries` sizes nearest to H works."""
    c, h, w = shape
    meta = model if next(model.parameters(), torch.empty(0, device="meta")).is_meta else _shape_model(model)
    limit = max(1024, 4 * max(h, w))
    sizes = sorted(range(1, limit + 1), key=lambda s: (abs(s - h), s))
    for s in sizes[:max_tries]:
        for ch in dict.fromkeys([c, 3, 1]):  # the given channels first
            cand = (ch, s, max(1, round(s * w / h)))
            if fits(meta, cand):
                return cand
    return None


def _mismatch_message(failure, shape, rows, model) -> str:
    (culprit, e) = failure
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    given = shape_str(shape)
    if culprit is None:
        where = f"after layer #{rows[-1].index} ({rows[-1].name}, {rows[-1].kind})" if rows else "in the first layer"
        msg = f"input {given} does not fit the model {where}: {first_line}"
    else:
        name, mod, in_shape = culprit
        index = len(rows) + 1
        got = in_shape[1:]
        label = f"layer #{index} ({type(mod).__name__} '{name}')"
        prev = f" (layer #{rows[-1].index} {rows[-1].kind} outputs {shape_str(rows[-1].out_shape)})" if rows else ""
        if isinstance(mod, nn.Linear) and got:
            msg = (f"input {given} does not fit: {label} expects {mod.in_features} input features but gets "
                   f"{got[-1]}{prev}")
        elif isinstance(mod, nn.modules.conv._ConvNd) and got and got[0] != mod.in_channels:
            msg = f"input {given} does not fit: {label} expects {mod.in_channels} channels but gets {got[0]}{prev}"
        else:
            msg = f"input {given} does not fit: {label} cannot take {shape_str(got)}{prev}: {first_line}"
    fit = find_fitting_input(model, shape)
    return msg + (f"; an input of {shape_str(fit)} fits" if fit else "; no nearby input size fits"), fit


def input_mismatch(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[str, tuple | None] | None:
    """(why `model` cannot take one input of `input_shape` (C, H, W), the nearest input that fits or None), or None
    when it can: the layer, both sizes and the fitting size of `tudui summary`'s error, for any caller."""
    input_shape = tuple(int(v) for v in input_shape)
    meta = _shape_model(model)
    rows, failure = _forward(meta, input_shape, record=True)
    return None if failure is None else _mismatch_message(failure, input_shape, rows, meta)


def summarize_model(model: nn.Module, input_shape: tuple[int, ...]) -> ModelSummary:
    """Per-layer output shapes, parameters and multiply-adds of `model` for one input of `input_shape` (C, H, W).

    Raises TuduiError naming the layer, both sizes and a fitting input size when the input does not fit.
    """
    input_shape = tuple(int(v) for v in input_shape)
    meta = _shape_model(model)
    rows, failure = _forward(meta, input_shape, record=True)
    if failure is not None:
        raise TuduiError(_mismatch_message(failure, input_shape, rows, meta)[0])
    params = {id(p): p for p in model.parameters()}.values()
    size = sum(p.numel() * p.element_size() for p in params) + sum(b.numel() * b.element_size()
                                                                   for b in model.buffers())
    return ModelSummary(input_shape, rows, sum(p.numel() for p in params),
                        sum(p.numel() for p in params if p.requires_grad), sum(r.macs for r in rows), size / 1e6)
