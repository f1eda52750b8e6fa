"""Head and weight surgery on any nn.Module: find and replace the classification head, adapt the first convolution
to 1 or 3 input channels, copy a state_dict into a model whose head or first convolution differs.

Used by the torchvision architectures (zoo.py), by `create_model` for `--weights FILE` (registry.py), and by
fine-tuning and cached-feature training (engine/), which split a model at its head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..core.console import shown
from ..core.errors import TuduiError


def _module_at(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_module_at(model, parent), name, new)


def head_path(model: nn.Module) -> str:
    """Dotted name of the classification head: the module a timm model's `get_classifier()` returns, else the last
    nn.Linear of the model."""
    if callable(getattr(model, "get_classifier", None)):
        classifier = model.get_classifier()
        found = [name for name, m in model.named_modules() if m is classifier and name]
        if found and any(True for _ in classifier.parameters()):
            return found[0]
        raise TuduiError(f"{type(model).__name__}'s get_classifier() returns {type(classifier).__name__}, a layer "
                         "without weights, so tudui cannot tell its head from its backbone (--freeze-backbone, "
                         "--fine-tune, weights with another class count); build it with a classifier")
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise TuduiError("model has no Linear layer to use as its classification head")
    return last[-1]


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    path = head_path(model)
    old = model.get_submodule(path)
    _set_module(model, path, nn.Linear(old.in_features, num_classes))
    return model


def append_head(model: nn.Module, num_classes: int) -> nn.Module:
    """The course's other way: keep the 1000-way layer and add Linear(1000, num_classes) after it."""
    path = head_path(model)
    old = model.get_submodule(path)
    parent_path = path.rpartition(".")[0]
    parent = _module_at(model, parent_path)
    new = nn.Linear(old.out_features, num_classes)
    if isinstance(parent, nn.Sequential) and list(parent.children())[-1] is old:
        parent.add_module("add_linear", new)
    else:
        _set_module(model, path, nn.Sequential(old, new))
    return model


def adapt_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Give the first Conv2d `in_channels` inputs (weights adapted later by `load_weights`)."""
    path, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels != in_channels:
        _set_module(model, path, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                           conv.padding, conv.dilation, conv.groups, conv.bias is not None))
    return model


@dataclass
class WeightsReport:
    """What `load_weights` did, for the run's start-up output."""

    source: str
    loaded: int  # tensors copied (the first conv's adapted ones included)
    head: tuple[tuple, tuple] | None = None  # (its weight's shape in the file, here): the head was skipped
    conv: tuple[int, int] | None = None  # (channels in the file, channels here): the first conv was adapted
    missing: int = 0  # tensors of the model, not of its head, the file lacks (left at their initial values)
    unused: int = 0  # tensors of the file the model has no place for

    def line(self) -> str:
        """'weights: 60 tensors loaded from FILE, head skipped (1000 classes in the file, 10 here), first conv
        adapted 3->1 channels (RGB kernels summed)'."""
        source = "torchvision's pretrained weights (DEFAULT)" if self.source.upper() == "DEFAULT" else shown(self.source)
        parts = [f"weights: {self.loaded} tensors loaded from {source}"]
        if self.head:
            (a, a_in), (b, b_in) = self.head
            why = f"{a} classes in the file, {b} here" if a != b else f"{a_in} input features in the file, {b_in} here"
            parts.append(f"head skipped ({why}; trained anew)")
        if self.conv:
            a, b = self.conv
            how = "RGB kernels summed" if b == 1 else "grey kernels repeated over RGB, divided by 3"
            parts.append(f"first conv adapted {a}->{b} channels ({how})")
        if self.missing:
            parts.append(f"{self.missing} tensors not in the file (left at their initial values)")
        if self.unused:
            parts.append(f"{self.unused} tensors of the file unused")
        return ", ".join(parts)


REPORT = "_tudui_weights_report"  # where load_weights leaves its report on the model


def take_weights_report(model: nn.Module) -> WeightsReport | None:
    """The report of the weights `load_weights` copied into `model` (None: none were), removed from the model."""
    return model.__dict__.pop(REPORT, None)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy `state` into `model`; returns the names left at their initial values. What was loaded, skipped and
    adapted is left on the model for `take_weights_report` (the builders that call this return only the model).

    Tensors of equal shape are copied. The first conv's weights are adapted when
    channels differ (RGB summed for 1 channel, grey repeated and divided by 3 for 3 channels).
    Head tensors of another class count are skipped (the head is re-initialised
    for the new classes). Any other mismatch is an error naming the layer.
    """
    own = model.state_dict()
    head = head_path(model)
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    state = {k.removeprefix("module."): v for k, v in state.items()}
    loaded, skipped = {}, []
    for key, target in own.items():
        src = state.get(key)
        if src is None:
            skipped.append(key)
        elif src.shape == target.shape:
            loaded[key] = src
        elif key == first_conv and src.dim() == 4 and src.shape[0] == target.shape[0] and src.shape[2:] == target.shape[2:]:
            # a grey image given as RGB (x, x, x) meets the same kernel sum: RGB -> 1 sums, 1 -> RGB repeats / 3
            loaded[key] = src.sum(1, keepdim=True).repeat(1, target.shape[1], 1, 1) / target.shape[1]
        elif key.startswith(head + ".") or key.startswith(head.rpartition(".")[0] + ".add_linear"):
            skipped.append(key)
        else:
            raise TuduiError(f"weights {source} do not fit this model: {key} is {tuple(src.shape)} in the file but "
                             f"{tuple(target.shape)} in the model; check that --model names the architecture the "
                             "weights were trained for")
    non_head = [k for k in skipped if not k.startswith(head.rpartition(".")[0] or head)]
    if len(loaded) == 0 or len(non_head) > len(own) // 2:
        raise TuduiError(f"weights {source} share almost no layers with this model ({len(loaded)} of {len(own)} "
                         "tensors match); check that --model names the architecture the weights were trained for")
    w = head + ".weight"
    head_skipped = w in skipped and w in state
    if head_skipped:  # the head is trained anew as a whole: its bias is not kept beside a new weight
        for key in [k for k in loaded if k.startswith(head + ".")]:
            del loaded[key]
            skipped.append(key)
    model.load_state_dict(loaded, strict=False)
    conv = first_conv in loaded and state[first_conv].shape[1] != own[first_conv].shape[1]
    model.__dict__[REPORT] = WeightsReport(
        source, len(loaded), (tuple(state[w].shape), tuple(own[w].shape)) if head_skipped else None,
        (state[first_conv].shape[1], own[first_conv].shape[1]) if conv else None, missing=len(non_head),
        unused=len(set(state) - set(own)))
    return skipped
