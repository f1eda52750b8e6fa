"""`--space default`: the options the defaults were tuned over, and the model among tudui's own nets that fit the
data (unless --model is given)."""
from __future__ import annotations

from torch import nn

from tudui.api import resolve_config
from tudui.models import count_parameters, create_model, list_models
from tudui.models import registry
from tudui.tuning.space import DEFAULT_MODEL_MAX_PARAMS, load_space


def _space(**options) -> dict:
    fixed = {"data": "digits"} | options
    return {p.name: p for p in load_space("default", fixed, resolve_config(fixed))}


def _needs_16(num_classes: int, in_channels: int, img_size: int, **kwargs) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def test_default_space_searches_the_cheap_tudui_nets_that_fit_the_data(monkeypatch):
    # a tudui net that needs 16-pixel inputs: not for digits' 8x8 images, one of the choices at --img-size 16
    monkeypatch.setitem(registry._REGISTRY, "needs-16",
                        registry.ModelInfo("needs-16", _needs_16, "test net", "tudui", 16, 32))
    space = _space()
    assert {"lr", "weight_decay", "label_smoothing", "batch_size", "augment", "ema"} <= set(space)
    # the reference: every registered tudui net, built for digits (10 classes, 1 channel, 8 px), by its size
    small = [m.name for m in list_models() if m.family == "tudui" and m.min_size <= 8
             and count_parameters(create_model(m.name, 10, 1, 8)) <= DEFAULT_MODEL_MAX_PARAMS]
    assert space["model"].choices == tuple(small) == ("fast", "fast-mlp", "fast-wide", "fast-res")
    assert "fast-res-wide" not in space["model"].choices  # --preset max's net: 1.7 M parameters, not cheap
    assert not {"resnet18", "cifar-net"} & set(space["model"].choices)  # other families: not tudui's own nets
    assert space["model"].choices[-1] != "needs-16"
    assert _space(img_size=16)["model"].choices[-1] == "needs-16"
    # a model the user fixes is every trial's; so is one given with its own arguments
    assert "model" not in _space(model="fast") and "lr" in _space(model="fast")
    assert "model" not in _space(img_size=6)  # no tudui net takes 6-pixel inputs: the space goes without

