"""Lessons: nn.Module, Conv2d, MaxPool2d, non-linear activations, Linear, Sequential and the CIFAR-10 net,
modifying VGG16.

The course checks its nets by feeding torch.ones((64, 3, 32, 32)) and derives each layer's output size by hand;
`tudui summary` prints that arithmetic for every layer. Nothing here needs data or weights.

    python examples/course/02_network.py
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

import tudui
from tudui.cli import main as tudui_cli

argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()

# Sequential and the CIFAR-10 net: 3 x (Conv2d 5x5 padding 2 -> MaxPool2d 2) with 32, 32, 64 channels -> Flatten
# -> Linear(1024, 64) -> Linear(64, 10). The course's shape check, then the padding=2 arithmetic per layer.
net = tudui.create_model("cifar-net", num_classes=10, in_channels=3, img_size=32)
print(net)
print("output for torch.ones((64, 3, 32, 32)):", tuple(net(torch.ones(64, 3, 32, 32)).shape))
assert tudui_cli(["summary", "cifar-net", "--input", "3x32x32"]) == 0

# Non-linear activations: the course's MNIST CNN has a ReLU after each convolution (no parameters of its own).
assert tudui_cli(["summary", "mnist-cnn", "--input", "1x28x28"]) == 0

# Linear: the course flattens a whole batch into one 196608-long row by mistake; nn.Flatten keeps the batch
# dimension. Feeding a net built for 32x32 with 28x28 images fails on the first Linear: tudui names the layer,
# both sizes and the nearest input that fits (exit code 2, one line).
assert tudui_cli(["summary", "cifar-net", "--input", "3x28x28", "--build-size", "32"]) == 2


# nn.Module: your own network, with __init__ and forward as the course writes them, registered under a name so
# every tudui command can use it (`tudui train --model my-net` in this process).
class MyNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        return self.head(self.features(x))


@tudui.register_model("my-net", description="a one-convolution net defined in examples/course/02_network.py")
def my_net(num_classes: int, in_channels: int, img_size: int) -> nn.Module:
    model = MyNet(num_classes, in_channels)
    model(torch.zeros(1, in_channels, img_size, img_size))  # materialise LazyLinear for this input size
    return model


assert tudui_cli(["summary", "my-net", "--input", "3x32x32"]) == 0

# Modifying VGG16 for 10 classes: replace classifier[6] (the default), or append a Linear(1000, 10) as the course's
# add_module('add_linear', ...). Built on the "meta" device: shapes only, no 528 MB of weights in memory.
with torch.device("meta"):
    replaced = tudui.create_model("vgg16", num_classes=10, img_size=224)
    appended = tudui.create_model("vgg16", num_classes=10, img_size=224, head="append")
print("vgg16 classifier, head replaced:", replaced.classifier[6])
print("vgg16 classifier, head appended:", appended.classifier[-1])
assert replaced.classifier[6].out_features == 10 and appended.classifier[-1].in_features == 1000
