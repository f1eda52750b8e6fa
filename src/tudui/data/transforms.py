"""What happens between a spec's two steps (spec.py: decode, then `normalize`) and after them.

Training augments between them, a whole uint8 batch at a time on the training device (engine/run.py
`Run.prepare`), as the --augment mode's row in core/modes.AUGMENTS says: `augment_batch` here (random crop with zero
padding = random translation, horizontal flip), or data/augment.py's random-resized-crop for photos, then its
RandAugment/TrivialAugment and random erasing; mixup/cutmix (data/augment.py) mix the normalised batch.
`model_logits` runs the model on a normalised batch (with flip test-time augmentation when the spec asks), and
`eval_transforms` gives the same evaluation steps per image, torchvision-style.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..core.modes import AUGMENTS
from .images import resize_side
from .spec import DataSpec

if TYPE_CHECKING:  # imported where used: torchvision costs a third of tudui's start-up (models/zoo.py says why)
    from torchvision.transforms import v2


def model_logits(model, x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """(B, C, H, W) normalised batch -> (B, K) logits, with flip test-time augmentation when the spec asks.

    Flip TTA averages the logits of each image and its horizontal mirror: the model saw both during training
    (flip augmentation), and the average is worth a few tenths of a percent of top-1 for twice the forward
    cost. `model` is any callable (an nn.Module, or an ONNX/TorchScript wrapper from inference/formats.py).
    """
    logits = model(x)
    if spec.flip_tta:
        logits = (logits + model(x.flip(3))) / 2
    return logits


def augment_batch(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random translation by up to `pad` px (zero fill) and random horizontal flip, per image.

    x: (B, C, H, W) uint8 on any device; returns the same shape and dtype.
    Equivalent to torchvision's RandomCrop(H, padding=pad) + RandomHorizontalFlip() per image.
    """
    B, C, H, W = x.shape
    dev = x.device
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * pad + 1, (B,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (B,), device=dev, generator=generator)
        rows = (dy[:, None] + torch.arange(H, device=dev))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(W, device=dev))[:, None, :]  # (B, 1, W)
        # Advanced indexing around the channel slice gives (B, H, W, C).
        x = xp[torch.arange(B, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(B, device=dev, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def augment_options(augment: str, spec: DataSpec) -> tuple[int, bool]:
    """(crop padding in px, flip?) for an `--augment` name (its row in core/modes.AUGMENTS)."""
    mode = AUGMENTS[augment]
    return (spec.pad if mode.crop else 0), mode.flip and spec.hflip


class _Decode:
    """A path, bytes or PIL image -> (C, S, S) uint8, as the spec decodes it (`DataSpec.decode`)."""

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec

    def __repr__(self) -> str:  # what print(eval_transforms(spec)) shows for this step
        s, c, crop = self.spec.img_size, self.spec.channels, self.spec.crop_pct
        how = f"squashed to {s}x{s}" if crop is None else \
            f"short side resized to {resize_side(s, crop)}, centre crop {s}x{s} (crop_pct {crop:g})"
        return f"Decode(any image -> {c}x{s}x{s} uint8: {'grey' if c == 1 else 'RGB'}, {how})"

    def __call__(self, src) -> torch.Tensor:  # path, bytes or PIL image -> (C, S, S) uint8
        return torch.from_numpy(self.spec.decode(src)).permute(2, 0, 1).contiguous()


def eval_transforms(spec: DataSpec) -> v2.Compose:
    """Per-image evaluation preset: decode + resize (+ centre crop with spec.crop_pct), then ToTensor + Normalize
    semantics."""
    from torchvision.transforms import v2

    return v2.Compose([_Decode(spec), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])
