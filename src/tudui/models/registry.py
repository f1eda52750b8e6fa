"""A registry of small model-builder functions, looked up by name (timm's pattern).

A builder takes (num_classes, in_channels, img_size, **kwargs) and returns an
nn.Module mapping (B, in_channels, img_size, img_size) float to (B, num_classes)
logits. Registering it is all it takes for the CLI, `tudui models` and the
registry tests to know it.

This module imports none of tudui's models: they register themselves when
models/__init__.py imports them (course.py, fast.py, zoo.py), as timm's and
torchvision's model modules do, so the registry is filled once `tudui.models`
is imported (importing `tudui.models.registry` imports the package first).
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch.nn as nn

from ..core.checkpoint import read_weights, weights_arch
from ..core.errors import TuduiError
from ..core.options import option_text
from ..core.pyfile import is_file_ref, load_object, module_classes, split_ref
from .surgery import load_weights
from .user import build_from_source, call_builder


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    family: str  # "course", "tudui", "torchvision", "timm" or "user"
    min_size: int  # smallest square input (pixels) the architecture accepts
    default_size: int  # a sensible input size when the data does not dictate one
    # keyword arguments that rebuild an arch recorded before they existed (make_arch records each one's current
    # value, so an arch without it is older): fast-mlp's head before its hidden layer slid over the map
    legacy: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}
_SOURCES: dict[str, Callable[[str], ModelInfo]] = {}  # name prefix ('timm:') -> the ModelInfo of a name it starts
_SUGGEST: list[Callable[[str], list[str]]] = []  # an unknown name -> the names a source would take instead


def register_source(prefix: str, resolve: Callable[[str], ModelInfo],
                    suggest: Callable[[str], list[str]] | None = None) -> None:
    """A family of models named 'PREFIX...' (timm_models.py: 'timm:NAME', 'local-dir:FOLDER'), resolved on demand
    instead of being registered one by one; `suggest` offers its names for an unknown plain name."""
    _SOURCES[prefix] = resolve
    if suggest is not None:
        _SUGGEST.append(suggest)


def register_model(name: str, *, description: str, family: str = "tudui", min_size: int = 8,
                   default_size: int = 32, legacy: dict | None = None) -> Callable:
    """Decorator that adds a model builder to the registry under `name` (`--model NAME`, `tudui models`).

        @register_model("my-net", description="two convs and a linear head", min_size=16)
        def my_net(num_classes: int, in_channels: int, img_size: int, **kwargs) -> nn.Module: ...

    The builder is called with the classes, input channels and square input side the data needs, plus any
    `--model-args` as keywords; min_size is the smallest side it accepts, default_size the side `tudui summary`
    and `tudui models` build it for; family groups the listing (tudui, course, torchvision). A name registered
    twice is a ValueError. Every registered model is exercised by tests/models/test_registry.py. `legacy`: when a
    builder's new keyword changes what an existing checkpoint's weights mean, the value that rebuilds checkpoints
    written before it (checkpoints written since record the keyword).
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, fn, description, family, min_size, default_size, dict(legacy or {}))
        return fn

    return deco


def list_models() -> list[ModelInfo]:
    return list(_REGISTRY.values())


def get_model_info(name: str) -> ModelInfo:
    """A registered model, or a user's class/builder named as 'path/file.py:Name' (models/user.py)."""
    if is_file_ref(name):
        obj, path, attr = load_object(name)

        def builder(num_classes: int, in_channels: int, img_size: int, **args) -> nn.Module:
            return call_builder(obj, num_classes, in_channels, img_size, args, label=attr)

        return ModelInfo(name, builder, f"{attr} from {path}", "user", 1, 32)
    prefix = next((p for p in _SOURCES if name.startswith(p)), None)
    if prefix is not None:
        return _SOURCES[prefix](name)
    if name not in _REGISTRY and name.endswith(".py"):
        raise TuduiError(file_without_name(name))
    if name not in _REGISTRY:
        close = [n for suggest in _SUGGEST for n in suggest(name)] or \
            difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise TuduiError(f"unknown model '{name}'; {hint}`tudui models` lists the {len(_REGISTRY)} available")
    return _REGISTRY[name]


def file_without_name(name: str) -> str:
    """The error for `--model model.py`: the file, but not which class in it (listed without running the file)."""
    path = Path(name).expanduser()
    if not path.is_file():
        return f"--model {name}: no such Python file (name your own model as path/to/file.py:ClassName)"
    classes = module_classes(path)
    if len(classes) == 1:
        return f"--model {name} names a file, not the model in it: write --model {name}:{classes[0]}"
    if classes:
        return (f"--model {name} names a file, not the model in it: write --model {name}:NAME with NAME one of the "
                f"nn.Module classes it defines: {', '.join(classes)}")
    return (f"--model {name} names a file, not the model in it, and it defines no nn.Module class at top level; "
            f"write --model {name}:NAME naming the class (or a function returning the model)")


def create_model(name: str, num_classes: int, in_channels: int = 3, img_size: int = 32, **kwargs) -> nn.Module:
    """Build model `name` for `num_classes` outputs and (in_channels, img_size, img_size) inputs."""
    info = get_model_info(name)
    if img_size < info.min_size:
        raise TuduiError(f"model {name} needs inputs of at least {info.min_size}x{info.min_size} pixels, got "
                         f"{img_size}x{img_size}; pass {option_text('img_size', info.min_size)} (or larger)")
    weights = None
    if "weights" in kwargs and "weights" not in inspect.signature(info.builder).parameters:
        weights = kwargs.pop("weights")  # builders without their own weights handling: load the file here
    model = info.builder(num_classes=num_classes, in_channels=in_channels, img_size=img_size, **kwargs)
    if weights:
        if weights.upper() == "DEFAULT":
            raise TuduiError(f"model {name} has no pretrained weights to download; pass --weights FILE")
        state = read_weights(weights)
        # only a model with legacy keywords reads the file's arch too (a second load of a file that may be large)
        arch = weights_arch(weights) if info.legacy else None
        if arch and arch.get("name") == name and legacy_kwargs(arch):
            state = renamed_to_current(arch, state)
        load_weights(model, state, weights)
    return model


def renamed_to_current(arch: dict, state: dict) -> dict:
    """The weights of a checkpoint written before one of its model's legacy keywords existed, under the names today's
    layout of that model gives them, where both layouts hold the same tensors in the same order (fast-mlp's pooled
    head and its windows head: at 28 px the same function). Otherwise (fast-wide, which had no hidden layer) the
    tensors whose name and shape today's layout shares, its trunk: the head starts afresh, and --weights' note counts
    what was left at its initial values, rather than refusing a head of another shape under the same name."""
    old = build_model(arch).state_dict()
    current = create_model(arch["name"], arch["num_classes"], arch["in_channels"], arch["img_size"],
                           **{k: v for k, v in arch.get("kwargs", {}).items() if k != "weights"}).state_dict()
    if list(old) == list(state) and [t.shape for t in old.values()] == [t.shape for t in current.values()]:
        return {new: state[was] for new, was in zip(current, old)}
    return {k: t for k, t in state.items() if k in current and current[k].shape == t.shape}


def make_arch(name: str, num_classes: int, in_channels: int, img_size: int, **kwargs) -> dict:
    """What a checkpoint records to rebuild the model with `build_model` (initial weights are not part of it); a
    registered model's `legacy` keywords are recorded with the values they are built with."""
    info = _REGISTRY.get(name)
    if info and info.legacy:
        defaults = inspect.signature(info.builder).parameters
        kwargs = {**{k: defaults[k].default for k in info.legacy}, **kwargs}
    return {"name": name, "num_classes": num_classes, "in_channels": in_channels, "img_size": img_size,
            "kwargs": {k: v for k, v in kwargs.items() if k != "weights"}}


def legacy_kwargs(arch: dict) -> dict:
    """The keyword arguments an `arch` recorded before some of its registered model's keywords existed is rebuilt
    with (ModelInfo.legacy: fast-mlp's pooled head); {} for an arch that records them all, or not a registered model."""
    info = _REGISTRY.get(arch.get("name", ""))
    return {k: v for k, v in info.legacy.items() if k not in arch.get("kwargs", {})} if info else {}


def build_model(arch: dict, model_file: str | None = None, base_dir: str | None = None,
                trust_code: bool = False) -> nn.Module:
    """The untrained model a checkpoint's or export's `arch` describes (its weights are loaded by the caller).

    A user's model is rebuilt from its file (`arch["source"]`): `model_file` where it has moved, else relative
    to `base_dir` (the checkpoint's folder), else where it was at training. Every file an `arch` names (as its
    source or as a 'file.py:Name' name) goes through build_from_source, which imports it only with the user's
    consent: `model_file`, `trust_code`, or contents the user trained with here.
    """
    kwargs = {**legacy_kwargs(arch), **{k: v for k, v in arch.get("kwargs", {}).items() if k != "weights"}}
    source = arch.get("source")
    if not source and is_file_ref(arch["name"]):  # a file named as the architecture: the same consent applies
        path, name = split_ref(arch["name"])
        source = {"path": str(path), "relpath": None, "name": name, "args": kwargs}
    if source:
        return build_from_source(source, arch["num_classes"], arch["in_channels"], arch["img_size"],
                                 model_file, base_dir, trust_code)
    return create_model(arch["name"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                        img_size=arch["img_size"], **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
