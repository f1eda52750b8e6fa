"""A registry of small model-builder functions, looked up by name (timm's pattern).

A builder takes (num_classes, in_channels, img_size, **kwargs) and returns an
nn.Module mapping (B, in_channels, img_size, img_size) float to (B, num_classes)
logits. Registering it is all it takes for the CLI, `tudui models` and the
registry tests to know it.
"""
from __future__ import annotations

import inspect

import difflib
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..errors import TuduiError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    family: str  # "course", "tudui" or "torchvision"
    min_size: int  # smallest square input (pixels) the architecture accepts
    default_size: int  # a sensible input size when the data does not dictate one


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, description: str, family: str = "tudui", min_size: int = 8,
                   default_size: int = 32) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, fn, description, family, min_size, default_size)
        return fn

    return deco


def _ensure_loaded() -> None:
    from . import course, fast, zoo  # noqa: F401  (importing registers the builders)


def list_models() -> list[ModelInfo]:
    _ensure_loaded()
    return list(_REGISTRY.values())


def get_model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise TuduiError(f"unknown model '{name}'; {hint}`tudui models` lists the {len(_REGISTRY)} available")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, in_channels: int = 3, img_size: int = 32, **kwargs) -> nn.Module:
    """Build model `name` for `num_classes` outputs and (in_channels, img_size, img_size) inputs."""
    info = get_model_info(name)
    if img_size < info.min_size:
        raise TuduiError(f"model {name} needs inputs of at least {info.min_size}x{info.min_size} pixels, got "
                         f"{img_size}x{img_size}; pass --img-size {info.min_size} (or larger)")
    weights = None
    if "weights" in kwargs and "weights" not in inspect.signature(info.builder).parameters:
        weights = kwargs.pop("weights")  # builders without their own weights handling: load the file here
    model = info.builder(num_classes=num_classes, in_channels=in_channels, img_size=img_size, **kwargs)
    if weights:
        from .zoo import load_weights, read_state_dict

        if weights.upper() == "DEFAULT":
            raise TuduiError(f"model {name} has no pretrained weights to download; pass --weights FILE")
        load_weights(model, read_state_dict(weights), weights)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
