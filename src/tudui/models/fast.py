"""tudui's default network: a small BatchNorm CNN chosen for accuracy per CPU-second.

Chosen by a sweep on Fashion-MNIST on a 2-core CPU (hyperparameters picked on a
held-out 10% of the training set): three stages of Conv3x3 -> MaxPool -> BN -> ReLU
(pooling before BN/ReLU runs them on a quarter of the pixels), widths 16-32-128,
then an average pool to 3x3 and one Linear. ~2.8 M multiply-adds per 28x28 image,
53 k parameters at 10 classes.
"""
from __future__ import annotations

import torch.nn as nn

from .registry import register_model


def stage(c_in: int, c_out: int) -> list[nn.Module]:
    """(B, c_in, H, W) -> (B, c_out, H//2, W//2)."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


@register_model("fast", min_size=8, default_size=28,
                description="tudui's default: 3x(Conv3x3-MaxPool-BN-ReLU) 16-32-128, avg pool to 3x3, Linear")
def fast(num_classes: int = 10, in_channels: int = 1, img_size: int = 28, widths: tuple = (16, 32, 128)) -> nn.Module:
    layers, c, side = [], in_channels, img_size
    for w in widths:  # 28 -> 14 -> 7 -> 3
        layers += stage(c, w)
        c, side = w, side // 2
    # Summarise the final (side x side) map as 3x3 with a fixed average pool (an adaptive pool does the same
    # but cannot be exported to ONNX when side is not a multiple of 3); maps under 3x3 are used as they are.
    pool = [nn.AvgPool2d(side - 2, stride=1)] if side > 3 else []
    out_side = min(side, 3)
    return nn.Sequential(*layers, *pool, nn.Flatten(), nn.Linear(c * out_side * out_side, num_classes))
