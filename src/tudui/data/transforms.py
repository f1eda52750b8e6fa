"""Preprocessing and augmentation, built from one DataSpec that travels with the model.

Every path into the model goes through the same two steps:
  1. `decode_image` (images.py): any file -> (S, S, C) uint8, resized to the spec's size (squashed, or with
     `crop_pct` set, short side resized then centre-cropped: `spec.decode`);
  2. `normalize`: uint8 -> float32 `(x / 255 - mean) / std`, torchvision's ToTensor + Normalize.
Training augments between them, a whole uint8 batch at a time on the training device (engine/trainer.py
`Run.prepare`), as the --augment mode's row in core/modes.AUGMENTS says: `augment_batch` here (random crop with zero
padding = random translation, horizontal flip), or data/augment.py's random-resized-crop for photos, then its
RandAugment/TrivialAugment and random erasing; mixup/cutmix (data/augment.py) mix the normalised batch.
`eval_transforms` gives the same evaluation steps per image, torchvision-style.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace

import numpy as np

import torch
from torchvision.transforms import v2

from ..core.errors import TuduiError
from ..core.modes import AUGMENTS
from .images import decode_image, shown


@dataclass
class DataSpec:
    """What a model needs to know about its input; saved in every checkpoint."""

    classes: list[str]
    img_size: int  # square side in pixels
    channels: int  # 1 (grayscale) or 3 (RGB)
    mean: list[float]  # per channel, in [0, 1]
    std: list[float]
    hflip: bool = True  # whether horizontal flips keep the label
    tta: bool = False  # evaluate/predict on the image and its mirror, averaging the logits (only with hflip)
    # Evaluation crop (the photo recipe): resize the short side to floor(img_size / crop_pct), then cut the centre
    # img_size x img_size. None: squash the whole image to img_size x img_size (tudui's recipe for small images, and
    # what every checkpoint written before this field existed does).
    crop_pct: float | None = None

    def decode(self, src) -> np.ndarray:
        """A path, bytes or PIL image -> (S, S, C) uint8, exactly as this model's evaluation sees it."""
        return decode_image(src, self.channels, self.img_size, self.crop_pct)

    @property
    def flip_tta(self) -> bool:
        """Whether evaluation averages each image with its mirror (asked for, and flips keep the label)."""
        return self.tta and self.hflip

    def with_tta(self, tta: bool | None) -> "DataSpec":
        """This spec with flip TTA switched on/off as asked (None: as saved)."""
        if tta is None:
            return self
        if tta and not self.hflip:
            raise TuduiError("--tta averages each image with its mirror, but this model's classes change under a "
                             "horizontal flip (it was trained with --no-hflip); drop --tta")
        return replace(self, tta=tta)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def pad(self) -> int:
        """Zero padding (pixels) of the random crop: 1/8 of the side (4 px at 32, 3 px at 28)."""
        return max(1, self.img_size // 8)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        for name in d.get("classes") or []:
            if isinstance(name, str) and not _is_utf8(name):  # a Latin-1 class folder, before tudui refused them
                raise TuduiError(f"this model's class name '{shown(name)}' is not UTF-8 text, so it cannot be shown "
                                 "or served; rename the class folder in UTF-8 and train again")
        return cls(**{k: d[k] for k in ("classes", "img_size", "channels", "mean", "std", "hflip", "tta", "crop_pct")
                     if k in d})


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """(B, C, H, W) uint8 -> float32, scaled to [0, 1] then standardised per channel."""
    # (x / 255 - mean) / std as x * (1 / (255 std)) - mean / std: one float copy and one in-place pass instead of
    # three full-size temporaries (a 256-image batch of 3x256x256 photos is 200 MB of float32 per temporary)
    shift, scale = _norm_constants(tuple(spec.mean), tuple(spec.std), x.device)
    return torch.addcmul(shift, x.to(torch.float32), scale)


@functools.lru_cache(maxsize=32)
def _norm_constants(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(-mean/std, 1/(255 std)), each (1, C, 1, 1) float32 on `device`, made once: building them from Python lists
    every batch is a blocking host-to-device copy on a GPU, which stalled each training step until the GPU was idle."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (-m / s).to(device), (1.0 / (255.0 * s)).to(device)


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


def denormalize(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Inverse of `normalize`, to [0, 1] floats (for pictures of batches)."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1)


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
    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec

    def __call__(self, src) -> torch.Tensor:  # path, bytes or PIL image -> (C, S, S) uint8
        return torch.from_numpy(self.spec.decode(src)).permute(2, 0, 1).contiguous()


def eval_transforms(spec: DataSpec) -> v2.Compose:
    """Per-image evaluation preset: decode + resize (+ centre crop with spec.crop_pct), then ToTensor + Normalize
    semantics."""
    return v2.Compose([_Decode(spec), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])
