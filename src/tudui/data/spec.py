"""The input contract: `DataSpec`, what a model needs to know about its input, saved in every checkpoint and export.

Every path into a model goes through the same two steps, both defined by the spec:
  1. `DataSpec.decode` (images.decode_image): any file -> (S, S, C) uint8, resized to the spec's size (squashed, or
     with `crop_pct` set, short side resized then centre-cropped);
  2. `normalize`: uint8 -> float32 `(x / 255 - mean) / std`, torchvision's ToTensor + Normalize.

`Layout` is step 1 on its own, (channels, size, crop_pct): what one decoded row holds, whether it is decoded from
its file, held in memory or read from the disk cache (cache.py keys its entries by `Layout.tag`). It lives here,
beside the spec, because it is the spec's decoding and nothing else: `eval_layout(spec)` is what evaluation,
predict, serve and exports feed the model, and a training row (factory.train_layout) is the same kind of value.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ..core.errors import TuduiError
from .images import RESAMPLE, decode_image, shown


@dataclass(frozen=True)
class Layout:
    """What one decoded row holds: `decode_image(path, channels, size, crop_pct, interpolation)`, (size, size,
    channels) uint8."""

    channels: int
    size: int
    crop_pct: float | None = None  # None: squashed to a square; else short side resized, centre cropped
    interpolation: str = "bilinear"  # the resize filter, a name of images.RESAMPLE

    @property
    def tag(self) -> str:
        how = "squash" if self.crop_pct is None else f"crop{self.crop_pct:g}"
        # bilinear rows keep the tag they always had, so existing disk caches stay valid
        filt = "" if self.interpolation == "bilinear" else f"-{self.interpolation}"
        return f"c{self.channels}-s{self.size}-{how}{filt}"

    @property
    def row_shape(self) -> tuple[int, int, int]:
        return self.size, self.size, self.channels

    @property
    def row_bytes(self) -> int:
        return self.size * self.size * self.channels

    def decode(self, src) -> np.ndarray:
        return decode_image(src, self.channels, self.size, self.crop_pct, self.interpolation)


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
    # Where the preprocessing above came from when pretrained weights set it: timm's pretrained_cfg of the weights
    # (source, mean, std, input_size, crop_pct, interpolation), kept as it was, for eval, predict, serve and exports
    # to show; None for every other run. Decoding reads the fields above, never this record.
    pretrained_cfg: dict | None = None
    # Multi-label (several classes per image): a sigmoid per class, and each class's probability threshold chosen on
    # the validation split (engine/multilabel.py), applied by eval, predict, serve and every export.
    multi_label: bool = False
    thresholds: list[float] | None = None
    # The resize filter (images.RESAMPLE): bilinear, tudui's recipe and every checkpoint's before this field existed;
    # bicubic when a timm model's pretrained weights were trained on it (their pretrained_cfg's interpolation).
    interpolation: str = "bilinear"

    def decode(self, src) -> np.ndarray:
        """A path, bytes or PIL image -> (S, S, C) uint8, exactly as this model's evaluation sees it."""
        return decode_image(src, self.channels, self.img_size, self.crop_pct, self.interpolation)

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
        if d.get("interpolation", "bilinear") not in RESAMPLE:
            raise TuduiError(f"this model resizes its images with '{d['interpolation']}', which this tudui does not "
                             f"know ({', '.join(RESAMPLE)}); upgrade tudui")
        return cls(**{k: d[k] for k in ("classes", "img_size", "channels", "mean", "std", "hflip", "tta", "crop_pct",
                                                "pretrained_cfg", "multi_label", "thresholds", "interpolation")
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



def denormalize(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Inverse of `normalize`, to [0, 1] floats (for pictures of batches)."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1)


def eval_layout(spec: DataSpec) -> Layout:
    """What evaluation, predict, serve and exports feed the model: spec.decode's pixels."""
    return Layout(spec.channels, spec.img_size, spec.crop_pct, spec.interpolation)
