"""tudui's default network: a small BatchNorm CNN chosen for accuracy per CPU-second.

Chosen by a sweep on Fashion-MNIST on a 2-core CPU (hyperparameters picked on a
held-out 10% of the training set): three stages of Conv3x3 -> MaxPool -> BN -> ReLU
(pooling before BN/ReLU runs them on a quarter of the pixels), widths 16-32-128,
then an average pool to 3x3 and one Linear. 2.35 M multiply-adds per 28x28 image,
53 k parameters at 10 classes. `fast-mlp` adds a hidden layer of 256 to the head (2.64 M, 0.34 M parameters: the
cheapest gain found, +0.6 points of validation top-1 for ~10% more time), slid over the last map's 3x3 windows on
images larger than 28 px (see `head`); `fast-wide` is `fast-mlp` at 32-64-128 channels: 6.8 M, 0.39 M parameters.

`--model auto` (engine/choices.py) trains `fast-wide` where the device computes bf16 natively, `fast-mlp` elsewhere.
The presets go deeper: `fast-res` (--preset best) adds a stem and two residual blocks (ResNet-9-like, 16 M
multiply-adds), `fast-res-wide` (--preset max) doubles its channels (65 M).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class PoolCroppedConv(nn.Conv2d):
    """A 3x3 'same' convolution on an odd side that skips the last row and column of its output.

    MaxPool2d(2) on an odd side (7x7 -> 3x3) drops the last row and column, so computing them is wasted:
    a quarter of the last stage's work at 28 px. Padding only the top and left gives exactly the rows
    and columns the pool keeps: (B, C, H, W) -> (B, C_out, H-1, W-1). Same parameters as nn.Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 0, 1, 0)))


def stage(c_in: int, c_out: int, side: int) -> list[nn.Module]:
    """(B, c_in, side, side) -> (B, c_out, side//2, side//2)."""
    conv = PoolCroppedConv(c_in, c_out, 3, padding=0, bias=False) if side % 2 else \
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    return [conv, nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class HiddenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the hidden layer's channels, (B, C) or (B, C, H, W), that also trains when the batch holds one
    value per channel (--batch-size 1 at a 1x1 output, a one-image training set), which BatchNorm refuses: such a
    batch has no variance, so it is normalised with the running statistics and leaves them unchanged. Other batches
    and evaluation: BatchNorm1d on (B, C), BatchNorm2d on (B, C, H, W) (the same parameters and statistics)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected a (B, C) or (B, C, H, W) input, got {x.dim()} dimensions")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class WindowLinear(nn.Linear):
    """fast-mlp's hidden layer: one Linear applied to each k x k window of a (B, C, H, W) map, its weight laid out as
    a flattened window (C*k*k inputs): (B, out, H-k+1, W-k+1). A map of one window (28 px: 3x3) gives (B, out), the
    Linear on the flattened map, computed as that matmul: as a bf16 convolution with a 1x1 output it ran at half the
    speed. Several windows run as one convolution with the same weights (an ONNX Conv, no copy of the windows)."""

    def __init__(self, channels: int, k: int, out_features: int) -> None:
        super().__init__(channels * k * k, out_features, bias=False)
        self.channels, self.k = channels, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] == self.k and x.shape[-1] == self.k:
            return F.linear(x.flatten(1), self.weight)
        return F.conv2d(x, self.weight.view(self.out_features, self.channels, self.k, self.k))

    def extra_repr(self) -> str:
        return f"{self.channels}x{self.k}x{self.k} windows, out_features={self.out_features}"


class PositionMean(nn.Module):
    """(B, C, H, W) -> (B, C): the mean over positions, after each window's hidden units passed their own ReLU; a
    (B, C) input (one window) is returned as it is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) if x.dim() == 4 else x


WINDOW_GRID = 7  # the hidden layer's 3x3 windows slide over at most a 7x7 map: 25 windows


def head(c: int, side: int, num_classes: int, hidden: int | None = None,
         pooled_hidden: bool = False) -> list[nn.Module]:
    """(B, c, side, side) -> (B, num_classes) logits.

    Without `hidden`: the final map is summarised as 3x3 with a fixed average pool (an adaptive pool does the same but
    cannot be exported to ONNX when side is not a multiple of 3), flattened, and one Linear gives the logits: the
    mean, over every 3x3 window of the map, of one linear function of the window. Maps under 3x3 are used as they are.

    With `hidden` (fast-mlp, fast-wide), one hidden layer of `hidden` units before the classifier: a Linear on each
    3x3 window of the map (WindowLinear), BN and ReLU, then the mean over the windows. On a 28-px image (a 3x3 map)
    there is one window, and the head computes what it did before the layer slid: the flattened map's Linear-BN-ReLU.
    On larger images each window's evidence passes its own ReLU before the mean, so the logits sum evidence over
    positions, which is what Grad-CAM reads (benchmarks/README.md, issue 31: on 56-px mosaics 41.1% of its map on the
    right item with the hidden layer on the map pooled to 3x3, 79.5% with it slid). A map larger than 7x7 is
    average-pooled to 7x7 first, so the hidden layer costs at most 25 windows (7.4 M multiply-adds at fast's 128
    channels).
    `pooled_hidden`: the head of checkpoints written before the hidden layer slid (the map pooled to 3x3, flattened,
    then the hidden layer). The classifier stays the model's last nn.Linear (the head that --freeze-backbone trains).
    """
    if not hidden or pooled_hidden:
        pool = [nn.AvgPool2d(side - 2, stride=1)] if side > 3 else []
        features = c * min(side, 3) ** 2
        mlp = [nn.Linear(features, hidden, bias=False), HiddenBatchNorm(hidden), nn.ReLU(inplace=True)] \
            if hidden else []
        return [*pool, nn.Flatten(), *mlp, nn.Linear(hidden or features, num_classes)]
    pool = [nn.AvgPool2d(side - WINDOW_GRID + 1, stride=1)] if side > WINDOW_GRID else []
    return [*pool, WindowLinear(c, min(side, 3), hidden), HiddenBatchNorm(hidden), nn.ReLU(inplace=True),
            PositionMean(), nn.Linear(hidden, num_classes)]


# Checkpoints written before the hidden layer slid over the map record no `pooled_hidden`: they rebuild with it on
LEGACY_HEAD = {"pooled_hidden": True}


@register_model("fast", min_size=8, default_size=28, legacy=LEGACY_HEAD,
                description="the small net: 3x(Conv3x3-MaxPool-BN-ReLU) 16-32-128, avg pool to 3x3, Linear")
def fast(num_classes: int = 10, in_channels: int = 1, img_size: int = 28, widths: tuple = (16, 32, 128),
         hidden: int | None = None, pooled_hidden: bool = False) -> nn.Module:
    layers, c, side = [], in_channels, img_size
    for w in widths:  # 28 -> 14 -> 7 -> 3
        layers += stage(c, w, side)
        c, side = w, side // 2
    return nn.Sequential(*layers, *head(c, side, num_classes, hidden, pooled_hidden))


@register_model("fast-mlp", min_size=8, default_size=28, legacy=LEGACY_HEAD,
                description="`fast` with a hidden layer of 256 in the head (Conv3x3-BN-ReLU on each 3x3 window of "
                            "the last map, then their mean): +12% multiply-adds at 28 px, ~0.6 points more on "
                            "Fashion-MNIST (--model auto on a CPU without AMX)")
def fast_mlp(num_classes: int = 10, in_channels: int = 1, img_size: int = 28, hidden: int = 256,
             pooled_hidden: bool = False) -> nn.Module:
    """2.64 M multiply-adds per 28x28 grey image, 0.34 M parameters at 10 classes (the hidden layer holds 0.29 M)."""
    return fast(num_classes, in_channels, img_size, hidden=hidden, pooled_hidden=pooled_hidden)


@register_model("fast-wide", min_size=8, default_size=28, legacy={"hidden": None, **LEGACY_HEAD},
                description="`fast-mlp` with 32-64-128 channels: 2.6x its multiply-adds (--model auto on a GPU, or "
                            "a CPU with AMX where bf16 is faster)")
def fast_wide(num_classes: int = 10, in_channels: int = 1, img_size: int = 28, hidden: int | None = 256,
              pooled_hidden: bool = False) -> nn.Module:
    """6.79 M multiply-adds per 28x28 grey image, 0.39 M parameters at 10 classes. Before fast-mlp's hidden layer
    slid over the map it had none (`fast` with 32-64-128 channels); checkpoints of that time rebuild so."""
    return fast(num_classes, in_channels, img_size, widths=(32, 64, 128), hidden=hidden, pooled_hidden=pooled_hidden)


class Residual(nn.Module):
    """x + ReLU(BN(Conv3x3(ReLU(BN(Conv3x3(x)))))): two 'same' convolutions at one width and side, (B, C, S, S) in
    and out. The identity path lets the deeper nets train as quickly in their first epochs as `fast` does."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def res_net(num_classes: int, in_channels: int, img_size: int, widths: tuple) -> nn.Module:
    """Stem at full resolution, then stages as in `fast` (28 -> 14 -> 7 -> 3) with a Residual block after the first
    and the last stage, as in the ResNet-9 of the DAWNBench CIFAR-10 entries; the head is `fast`'s."""
    stem, *rest = widths
    layers, c, side = [nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem),
                       nn.ReLU(inplace=True)], stem, img_size
    for i, w in enumerate(rest):
        layers += stage(c, w, side)
        c, side = w, side // 2
        if i in (0, len(rest) - 1):
            layers.append(Residual(c))
    return nn.Sequential(*layers, *head(c, side, num_classes))


@register_model("fast-res", min_size=8, default_size=28,
                description="ResNet-9-like: stem 16, `fast` stages 32-64-128 with residual blocks after the first and "
                            "last; 16 M multiply-adds at 28 px (--preset best)")
def fast_res(num_classes: int = 10, in_channels: int = 1, img_size: int = 28,
             widths: tuple = (16, 32, 64, 128)) -> nn.Module:
    """16.3 M multiply-adds per 28x28 grey image (7x `fast`), 0.42 M parameters at 10 classes."""
    return res_net(num_classes, in_channels, img_size, tuple(widths))


@register_model("fast-res-wide", min_size=8, default_size=28,
                description="`fast-res` with twice the channels (stem 32, stages 64-128-256): 65 M multiply-adds "
                            "at 28 px (--preset max)")
def fast_res_wide(num_classes: int = 10, in_channels: int = 1, img_size: int = 28) -> nn.Module:
    """64.8 M multiply-adds per 28x28 grey image (28x `fast`), 1.67 M parameters at 10 classes."""
    return res_net(num_classes, in_channels, img_size, (32, 64, 128, 256))
