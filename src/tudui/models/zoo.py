"""torchvision architectures adapted to any number of classes and 1 or 3 input channels.

Adapting follows the course: the last Linear is replaced for `num_classes`
(`vgg16.classifier[6] = nn.Linear(4096, 10)`), or, with head="append", a new
Linear is added after it (`vgg16.classifier.add_module('add_linear', ...)`).
Pretrained weights come from a local state_dict file (`weights="path.pth"`) or
torchvision's weights enum (`weights="DEFAULT"`, cached under $TORCH_HOME). The head and first-conv surgery
itself is in surgery.py.

torchvision is imported inside the functions that use it, not here: importing it pulls in torch._dynamo (through
torchvision.ops), about a third of `tudui`'s start-up, which a run or a prediction of tudui's own nets never needs.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.checkpoint import read_weights
from ..core.errors import TuduiError
from .registry import register_model
from .surgery import adapt_first_conv, append_head, load_weights, replace_head

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


def torchvision_weights(arch: str, which: str) -> dict[str, torch.Tensor]:
    import torchvision

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


def build_torchvision(arch: str, num_classes: int, in_channels: int, weights: str | None = None,
                      head: str = "replace") -> nn.Module:
    import torchvision

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


def instance_name(model: nn.Module, num_classes: int, in_channels: int, img_size: int) -> str | None:
    """The registered name ('resnet18', ...) of a torchvision model given to the library built
    (`torchvision.models.resnet18(num_classes=10)`) when that name builds the same class with the same tensors, names
    and shapes for this data, at a size the name takes; None otherwise (the model stays the user's own)."""
    if not type(model).__module__.startswith("torchvision.models"):
        return None
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for arch, (min_size, _) in ARCHITECTURES.items():
        if img_size < min_size:  # create_model would refuse to rebuild it
            continue
        try:
            with torch.device("meta"):  # shapes only
                built = build_torchvision(arch, num_classes, in_channels)
        except Exception:  # noqa: BLE001 - not this architecture
            continue
        if type(built) is type(model) and {k: tuple(v.shape) for k, v in built.state_dict().items()} == own:
            return arch
    return None


def weights_crop_pct(arch, which: str | None) -> float | None:
    """The evaluation crop of torchvision's pretrained `which` weights for `arch` (crop / resize side: 224/256 =
    0.875 for ResNet), from the weights' metadata (nothing is downloaded); None for a weights file or an unknown
    name (the caller then uses ImageNet's 0.875)."""
    if not which or not isinstance(arch, str) or _is_path(which):
        return None
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
        weights = enum[which.upper()] if which.upper() != "DEFAULT" else enum.DEFAULT
        t = weights.transforms()
        crop, resize = t.crop_size[0], t.resize_size[0]
    except (KeyError, ValueError, AttributeError, IndexError, TypeError):
        return None
    return crop / resize
