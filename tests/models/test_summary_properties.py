"""Property-based: the output sizes `tudui summary` works out itself for Conv2d, MaxPool2d and AvgPool2d
(models/summary.size_arithmetic) against the shapes real layers produce on a tensor, for arbitrary kernels, strides,
paddings, dilations, ceil_mode and input sizes."""
from __future__ import annotations

import re

import torch
import torch.nn as nn
from hypothesis import assume, given, settings, strategies as st

from tudui.models.summary import size_arithmetic, summarize_model

PROPS = settings(max_examples=60, deadline=None)

pairs = st.integers(1, 5) | st.tuples(st.integers(1, 5), st.integers(1, 5))


def _pair(v):
    return (v, v) if isinstance(v, int) else v


@st.composite
def layers(draw) -> nn.Module:
    kind = draw(st.sampled_from(["conv", "max", "avg"]))
    k = draw(pairs)
    if kind == "conv":
        padding = draw(st.integers(0, 4) | st.tuples(st.integers(0, 4), st.integers(0, 4)) | st.just("valid"))
        stride = draw(pairs)
        if draw(st.booleans()):  # 'same' takes stride 1 only
            padding, stride = "same", 1
        return nn.Conv2d(1, 1, k, stride=stride, padding=padding, dilation=draw(pairs), bias=False)
    kh, kw = _pair(k)
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))  # PyTorch: at most half the kernel
    stride = draw(st.none() | pairs)
    ceil_mode = draw(st.booleans())
    if kind == "max":
        return nn.MaxPool2d(k, stride, padding, dilation=draw(pairs), ceil_mode=ceil_mode)
    return nn.AvgPool2d(k, stride, padding, ceil_mode=ceil_mode)


def predicted(lines: list[str], in_hw: tuple[int, int]) -> tuple[int, int]:
    """(H_out, W_out) as the arithmetic lines state them."""
    if len(lines) == 1 and lines[0].startswith("padding='same'"):
        assert lines[0] == "padding='same' keeps H and W"
        return in_hw
    values = {}
    for line in lines:
        m = re.fullmatch(r"(H_out = W_out|H_out|W_out) = (?:floor|ceil)\(.*\)(?: - 1)? = (-?\d+)"
                         r"(?: \(no window starts in the right padding\))?", line)
        assert m, line
        for axis in m.group(1).split(" = "):
            values[axis] = int(m.group(2))
    return values["H_out"], values["W_out"]


def real_output(layer: nn.Module, h: int, w: int) -> tuple[int, int] | None:
    """The reference: the (H, W) the layer gives a real (1, 1, h, w) tensor; None where PyTorch refuses the input."""
    try:
        with torch.no_grad():
            return tuple(layer(torch.zeros(1, 1, h, w)).shape[-2:])
    except RuntimeError:
        return None


@PROPS
@given(layer=layers(), h=st.integers(1, 40), w=st.integers(1, 40))
def test_size_arithmetic_equals_the_shape_of_a_real_layer(layer, h, w):
    want = real_output(layer, h, w)
    assume(want is not None)  # an input too small for the layer: PyTorch's error, not arithmetic
    lines = size_arithmetic(layer, (h, w))
    if layer.padding == "valid":
        assert lines == ["padding='valid' adds none"]
        return
    assert predicted(lines, (h, w)) == want, (layer, (h, w), lines)


@settings(max_examples=25, deadline=None)
@given(stack=st.lists(layers(), min_size=1, max_size=4), h=st.integers(8, 40), w=st.integers(8, 40))
def test_summary_rows_state_the_sizes_the_layers_give(stack, h, w):
    """Through summarize_model (a forward pass on the meta device): each row's arithmetic states its output size."""
    model = nn.Sequential(*stack)
    sizes, x = [], torch.zeros(1, 1, h, w)
    for layer in stack:  # the reference: the real layers, one after another
        try:
            with torch.no_grad():
                x = layer(x)
        except RuntimeError:
            assume(False)
        sizes.append(tuple(x.shape[-2:]))
    rows = summarize_model(model, (1, h, w)).rows
    assert [r.out_shape[-2:] for r in rows] == sizes
    for row, layer in zip(rows, stack):
        if layer.padding != "valid":
            assert predicted(row.arithmetic, tuple(row.in_shape[-2:])) == row.out_shape[-2:], (row, layer)
