"""The course's two networks, generalised to any channels, classes and input size."""
from __future__ import annotations

import torch.nn as nn

from .registry import register_model


@register_model("cifar-net", family="course", min_size=8, default_size=32,
                description="the course's CIFAR-10 net: 3x(Conv5x5 p2 + MaxPool2) 32-32-64, Linear->64->classes")
def cifar_net(num_classes: int = 10, in_channels: int = 3, img_size: int = 32) -> nn.Module:
    # padding=2 keeps H: H_out = (H + 2*2 - 1*(5-1) - 1)/1 + 1 = H; each pool halves (floor).
    side = img_size // 2 // 2 // 2  # 32 -> 16 -> 8 -> 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 5, padding=2), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 64),  # 1024 features at 32x32
        nn.Linear(64, num_classes),
    )


@register_model("mnist-cnn", family="course", min_size=4, default_size=28,
                description="the course's MNIST CNN: Conv16 5x5-ReLU-MaxPool, Conv32-ReLU-MaxPool, Linear")
def mnist_cnn(num_classes: int = 10, in_channels: int = 1, img_size: int = 28) -> nn.Module:
    side = img_size // 2 // 2  # 28 -> 14 -> 7
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * side * side, num_classes),
    )
