"""Decoding one image file into the model's pixel format.

Training, evaluation, prediction, export checks and the server all call
`decode_image`, so an RGBA PNG, a 16-bit TIFF or an EXIF-rotated JPEG becomes
the same pixels everywhere (the course's `image.convert('RGB')` for PNGs,
done once and for every mode).
"""
from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import TuduiError

# Extensions read as images when scanning folders (torchvision's list plus TIFF variants).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# Refuse images above this many pixels (decompression bombs); Pillow's own limit is ~89 M.
MAX_PIXELS = 64_000_000

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"}

# JPEG DCT scaling (Pillow's `draft`) decodes a large JPEG at 1/2, 1/4 or 1/8 of its size straight from the DCT
# coefficients, so pixels that the resize would throw away are never computed. The draft keeps at least DRAFT_GAP
# times the side the resize produces, as Pillow's own `thumbnail(reducing_gap=2.0)` does, so the final bilinear
# (antialiased) resize still has real detail to average over.
DRAFT_GAP = 2.0


class BadImage(TuduiError):
    """An image that cannot be decoded. `kind`: missing, not-an-image, too-large or corrupt."""

    def __init__(self, source: object, reason: str, kind: str = "corrupt") -> None:
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason
        self.kind = kind


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMG_EXTENSIONS)


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable (sorted) order; hidden files and folders are skipped
    (macOS `._x.jpg` resource forks, `.ipynb_checkpoints`), symlinked folders are followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_file(f) and not f.startswith("."))
    return out


def open_image(src, draft: int | None = None) -> Image.Image:
    """Open and fully decode `src` (a path, raw bytes, a PIL image, or a lazy item with an `open()` method such as
    a user Dataset's item, data/user.py); raise BadImage on failure.

    draft: a JPEG is decoded with DCT scaling to the smallest of 1/1, 1/2, 1/4, 1/8 of its size whose sides are both
    at least `draft` pixels (other formats are decoded whole).
    """
    if isinstance(src, Image.Image):
        return src
    name = "<bytes>" if isinstance(src, (bytes, bytearray)) else str(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if hasattr(src, "open") and not isinstance(src, (str, Path)):
                img = src.open()
                img.load()  # a lazily opened file inside the user's Dataset: decode it now
                return img
            fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else open(src, "rb")
            with fp:
                img = Image.open(fp)
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise BadImage(name, f"{w}x{h} pixels is over the limit of {MAX_PIXELS:,}", "too-large")
                if draft and img.format == "JPEG":
                    img.draft(None, (draft, draft))  # square request: the same scale whatever the EXIF rotation
                img.load()  # decode now so truncated files fail here, not in the training loop
    except (BadImage, TuduiError):  # TuduiError: a user Dataset item of an unusable type is a mistake to report
        raise
    except FileNotFoundError:
        raise BadImage(name, "no such file", "missing") from None
    except IsADirectoryError:
        raise BadImage(name, "a folder, not a file", "unreadable") from None
    except PermissionError:
        raise BadImage(name, "permission denied", "unreadable") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            raise BadImage(name, "not an image Pillow can decode", "not-an-image") from None
        raise BadImage(name, "too many pixels (decompression bomb)", "too-large") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage(name, f"corrupt or truncated ({e})") from None
    return img


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to 'L' (channels=1) or 'RGB' (channels=3).

    Alpha is dropped (as `convert('RGB')` does), palettes are expanded, CMYK is
    converted, and 16/32-bit or float images are scaled to 8 bits by their range.
    """
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
        else:
            top = 65535.0 if (img.mode.startswith("I;16") or (arr.size and arr.max() > 255)) else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def resize_side(size: int, crop_pct: float) -> int:
    """The short side an image is resized to before a centre crop of `size` (timm's `floor(size / crop_pct)`:
    256 for 224 at 0.875, torchvision's Resize(256) + CenterCrop(224))."""
    return max(size, int(math.floor(size / crop_pct + 1e-6)))


def _resize_crop(img: Image.Image, size: int, crop_pct: float) -> Image.Image:
    """Resize the short side to resize_side(size, crop_pct), then cut the centre size x size (torchvision's
    Resize(int) + CenterCrop: the long side is int(side * long / short), the crop's corner rounds half away)."""
    side = resize_side(size, crop_pct)
    w, h = img.size
    if w <= h:
        new = (side, max(side, int(side * h / w)))
    else:
        new = (max(side, int(side * w / h)), side)
    if new != img.size:
        img = img.resize(new, Image.BILINEAR)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _decode_plain_png(path: str | Path, channels: int, size: int | None) -> np.ndarray | None:
    """(size, size, channels) uint8 for a PNG that needs nothing but decoding, else None (decode_image goes on).

    Why: a folder of small PNGs (MNIST-style, 28x28 grey) costs ~68 us per file through Pillow (open, plugin
    parsing, mode checks) against ~25 us through torchvision's libpng decoder, which is most of a 70,000-file
    folder's first-run start-up. Only the PNGs whose decoded pixels are identical either way take this path:
    8-bit grey for channels=1 or 8-bit RGB for channels=3 (IHDR colour type 0 / 2, no palette, no alpha), already
    size x size (no resize), and no eXIf orientation chunk. Anything else, or any error, returns None and the file is
    decoded by Pillow, which also reports broken files.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    # Signature, then the IHDR chunk: width, height (big-endian), bit depth, colour type.
    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour = data[24], data[25]
    if depth != 8 or (colour, channels) not in ((0, 1), (2, 3)) or b"eXIf" in data:
        return None
    if size is not None and (width, height) != (size, size):
        return None
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_png

        out = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
    except Exception:  # noqa: BLE001 - a file libpng refuses goes to Pillow, which explains what is wrong
        return None
    if out.dtype != torch.uint8 or tuple(out.shape) != (channels, height, width):  # e.g. a tRNS key became alpha
        return None
    return out.permute(1, 2, 0).numpy().copy()  # (H, W, C), writable, as decode_image returns


def decode_image(src: str | Path | bytes | Image.Image, channels: int, size: int | None,
                 crop_pct: float | None = None) -> np.ndarray:
    """Decode `src` into a (size, size, channels) uint8 array.

    EXIF orientation is applied and the mode is converted by `_to_mode`. Then, with `crop_pct` None, the image is
    resized to size x size (squashed, bilinear with antialiasing: tudui's recipe for small images); with a
    `crop_pct` in (0, 1], its short side is resized to `resize_side(size, crop_pct)` and the centre size x size is
    cut out (the photo recipe, aspect ratio kept). Large JPEGs are DCT-scaled while decoding (see DRAFT_GAP).
    `size=None` keeps the image's own size.
    """
    if crop_pct is None and isinstance(src, (str, Path)) and str(src).lower().endswith(".png"):
        arr = _decode_plain_png(src, channels, size)
        if arr is not None:
            return arr
    target = size if size is None or crop_pct is None else resize_side(size, crop_pct)
    img = open_image(src, draft=math.ceil(target * DRAFT_GAP) if target else None)
    try:
        img = ImageOps.exif_transpose(img)
        img = _to_mode(img, channels)
        if size is not None and crop_pct is not None:
            img = _resize_crop(img, size, crop_pct)
        elif size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
    except (OSError, ValueError) as e:
        raise BadImage(src if not isinstance(src, (bytes, bytearray)) else "<bytes>", f"cannot convert ({e})") from None
    arr = np.array(img, dtype=np.uint8)  # a writable copy
    return arr[:, :, None] if arr.ndim == 2 else arr


def peek_image(path) -> tuple[tuple[int, int], str] | None:
    """(width, height) and mode from the header only (a lazy item is opened), or None when unreadable."""
    if hasattr(path, "open") and not isinstance(path, (str, Path)):
        try:  # a user Dataset's item: an unusable type raises TuduiError here, early
            img = open_image(path)
        except BadImage:
            return None
        return img.size, img.mode
    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except Exception:  # noqa: BLE001 - any failure means "not usable", reported later
        return None


def gray_mode(mode: str) -> bool:
    return mode in _GRAY_MODES
