"""tudui's default network: a small BatchNorm CNN chosen for accuracy per CPU-second."""
from __future__ import annotations

import torch.nn as nn

from .registry import register_model


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@register_model("fast", min_size=8, default_size=28,
                description="tudui's default: 4 conv-BN-ReLU blocks with early pooling, global pool, Linear")
def fast(num_classes: int = 10, in_channels: int = 1, img_size: int = 28, width: int = 32) -> nn.Module:
    w = width
    return nn.Sequential(
        *conv_bn(in_channels, w), nn.MaxPool2d(2),  # 28 -> 14
        *conv_bn(w, 2 * w), nn.MaxPool2d(2),  # 14 -> 7
        *conv_bn(2 * w, 4 * w),
        *conv_bn(4 * w, 4 * w), nn.MaxPool2d(2),  # 7 -> 3
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    )
