"""torchvision architectures adapted to any number of classes and 1 or 3 input channels.

Adapting follows the course: the last Linear is replaced for `num_classes`
(`vgg16.classifier[6] = nn.Linear(4096, 10)`), or, with head="append", a new
Linear is added after it (`vgg16.classifier.add_module('add_linear', ...)`).
Pretrained weights come from a local state_dict file (`weights="path.pth"`) or
torchvision's weights enum (`weights="DEFAULT"`, cached under $TORCH_HOME).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from ..core.checkpoint import read_weights
from ..core.errors import TuduiError
from .registry import register_model

# name -> (min input side, description)
ARCHITECTURES = {
    "resnet18": (16, "ResNet-18 (11.7 M params at 1000 classes)"),
    "resnet34": (16, "ResNet-34"),
    "resnet50": (16, "ResNet-50"),
    "vgg11": (32, "VGG-11"),
    "vgg16": (32, "VGG-16, as in the course"),
    "mobilenet_v3_small": (16, "MobileNetV3-Small"),
    "mobilenet_v3_large": (16, "MobileNetV3-Large"),
    "efficientnet_b0": (16, "EfficientNet-B0"),
}


def _module_at(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_module_at(model, parent), name, new)


def head_path(model: nn.Module) -> str:
    """Dotted name of the classification head: the last nn.Linear of the model."""
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


def torchvision_weights(arch: str, which: str) -> dict[str, torch.Tensor]:
    try:
        enum = torchvision.models.get_model_weights(arch)
        weights = enum[which.upper()] if which.upper() != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError):
        raise TuduiError(f"--weights {which}: not a weights name for {arch}; use DEFAULT or a file path") from None
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # no network, proxy, disk...
        raise TuduiError(f"could not get pretrained weights {weights} ({e}). Without a network, download "
                         f"{weights.url} elsewhere and pass --weights PATH, or place it in $TORCH_HOME/hub/checkpoints/") from None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy `state` into `model`; returns the names left at their initial values.

    Tensors of equal shape are copied. The first conv's weights are adapted when
    channels differ (RGB summed for 1 channel, gray repeated/3 for 3 channels).
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
            loaded[key] = src.sum(1, keepdim=True) if target.shape[1] == 1 else src.mean(1, keepdim=True).repeat(1, target.shape[1], 1, 1)
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
    model.load_state_dict(loaded, strict=False)
    return skipped


def build_torchvision(arch: str, num_classes: int, in_channels: int, weights: str | None = None,
                      head: str = "replace") -> nn.Module:
    model = torchvision.models.get_model(arch, weights=None)  # ImageNet shape: 3 channels, 1000 classes
    adapt_first_conv(model, in_channels)
    if head == "replace":
        replace_head(model, num_classes)
    elif head != "append":
        raise TuduiError(f"head must be 'replace' or 'append', got {head!r}")
    if weights:
        state = torchvision_weights(arch, weights) if not _is_path(weights) else read_weights(weights)
        load_weights(model, state, weights)
    if head == "append":
        append_head(model, num_classes)
    return model


def _is_path(weights: str) -> bool:
    return any(c in weights for c in "/\\.") or weights.lower().endswith((".pt", ".pth", ".safetensors"))


def _register(arch: str, min_size: int, description: str) -> None:
    def builder(num_classes: int = 1000, in_channels: int = 3, img_size: int = 224, weights: str | None = None,
                head: str = "replace") -> nn.Module:
        return build_torchvision(arch, num_classes, in_channels, weights, head)

    builder.__name__ = arch
    register_model(arch, family="torchvision", min_size=min_size, default_size=224, description=description)(builder)


for _arch, (_min, _desc) in ARCHITECTURES.items():
    _register(_arch, _min, _desc)


def weights_crop_pct(arch, which: str | None) -> float | None:
    """The evaluation crop of torchvision's pretrained `which` weights for `arch` (crop / resize side: 224/256 =
    0.875 for ResNet), from the weights' metadata (nothing is downloaded); None for a weights file or an unknown
    name (the caller then uses ImageNet's 0.875)."""
    if not which or not isinstance(arch, str) or _is_path(which):
        return None
    try:
        enum = torchvision.models.get_model_weights(arch)
        weights = enum[which.upper()] if which.upper() != "DEFAULT" else enum.DEFAULT
        t = weights.transforms()
        crop, resize = t.crop_size[0], t.resize_size[0]
    except (KeyError, ValueError, AttributeError, IndexError, TypeError):
        return None
    return crop / resize
