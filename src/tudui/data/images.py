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
import stat
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import TuduiError

# Extensions read as images when scanning folders (torchvision's list plus TIFF variants).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# Refuse images above this many pixels (decompression bombs); Pillow's own limit is ~89 M.
MAX_PIXELS = 64_000_000

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"}
# 16-bit, 32-bit integer and float grey: scaled to 8 bits by their range (_deep_to_l).
_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")

# Pixels of a 16/32-bit or float image converted to 8 bits at a time: float64 temporaries of ~2 MB each.
TILE_PIXELS = 1 << 18

# Bytes Pillow's bilinear resize may take (filter coefficients, ~16 bytes per source pixel along each axis; the
# horizontal pass's image, output width x source height; the output). An image that needs more (an extreme aspect
# ratio: a 1 x 8,000,000 image squashed to 32 x 32 took 122 MB, 16 bytes per pixel of its long side) is first
# box-reduced by an integer factor (Pillow's reducing_gap), which keeps at least REDUCING_GAP times the output's side.
RESAMPLE_BYTES = 64 << 20
REDUCING_GAP = 2.0
# --interpolation name -> (Pillow filter, its support in source pixels per unit of scale: the width of its
# coefficient tables relative to bilinear's). Bilinear is tudui's own recipe; bicubic is what most timm weights
# were trained on (their pretrained_cfg says so), so a timm model is evaluated on the resize it learnt from.
RESAMPLE = {"bilinear": (Image.BILINEAR, 1), "bicubic": (Image.BICUBIC, 2)}
# Bytes per pixel of width a decoder may hold in row buffers (two rows of 8 bytes: 16-bit RGBA PNG filtering).
DECODER_ROW_BYTES = 16
# What decode_cost adds for everything else a decode holds (decoder state, the file's bytes, tiles, Python objects).
DECODE_SLACK = 16 << 20
# What decode_cost adds for the resize: the resample above and a box-reduced copy (at most a few MB at 64 Mpx).
RESIZE_BYTES = RESAMPLE_BYTES + (32 << 20)

# JPEG DCT scaling (Pillow's `draft`) decodes a large JPEG at 1/2, 1/4 or 1/8 of its size straight from the DCT
# coefficients, so pixels that the resize would throw away are never computed. Used only where the result is the full
# decode's to within what a model notices (tests/data/test_images.py: against torchvision's full decode + Resize on
# real photos, a 32-px model's probabilities within 1e-3): at a scale that divides both sides, else the last, partial
# block becomes a whole pixel and the picture is stretched (258 px at 1/4: 65 pixels for 64.5); and keeping at least
# DRAFT_GAP times the side the resize produces. Pillow's thumbnail keeps 2x: a course model's answer on its own
# 258x258 JPEG at 32 px moved by 0.8 points of probability; 4x with whole blocks still moved a model by 3e-3, 8x by
# 6e-4 (the speed-up stays for small training sizes from large photos: 1/8 of a 4032x3024 photo for 32 px).
DRAFT_GAP = 8.0


class BadImage(TuduiError):
    """An image that cannot be decoded. `kind`: missing, not-an-image, too-large or corrupt."""

    def __init__(self, source: object, reason: str, kind: str = "corrupt") -> None:
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason
        self.kind = kind


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMG_EXTENSIONS)


def not_regular(mode: int) -> str | None:
    """What a file of this st_mode is when it is not a regular file ('a FIFO', ...); None when it is.

    Why: reading a FIFO blocks until someone writes to it, and a device such as /dev/zero never ends, so a data
    folder is read only through regular files."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def special_file(path: str | os.PathLike) -> str | None:
    """What `path` is when, links followed, it exists and is neither a regular file nor a folder ('a FIFO', 'a link
    to /dev/zero, a character device'); None otherwise (a missing file is reported by whoever reads it)."""
    try:
        what = not_regular(os.stat(path).st_mode)
    except OSError:
        return None
    if what in (None, "a folder"):
        return None
    return f"a link to {os.readlink(path)}, {what}" if os.path.islink(path) else what


class _SizedReader(io.RawIOBase):
    """A file read up to the size it had when opened, never further (a file that keeps growing ends there)."""

    def __init__(self, f, size: int) -> None:
        self._f, self._size, self._pos = f, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._size - self._pos)
        got = self._f.readinto(memoryview(b)[:n]) if n > 0 else 0
        self._pos += got or 0
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:  # the end is the stat'ed size, not wherever the file has grown to since
            offset, whence = self._size + offset, io.SEEK_SET
        self._pos = self._f.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def open_regular(path: str | os.PathLike) -> io.BufferedReader:
    """`path` opened for reading (links followed) when it is a regular file, read up to its stat'ed size at most.

    Raises BadImage(kind 'not-a-file') for a FIFO, a device, a socket, and the usual OSError for a missing file, a
    folder (IsADirectoryError) or a permission error. A FIFO is never opened (opening one waits for a writer), and the
    descriptor is checked again after opening, so a file swapped for a FIFO in between is refused too."""
    what = not_regular(os.stat(path).st_mode)
    if what == "a folder":
        raise IsADirectoryError(21, "Is a directory", str(path))
    if what:
        raise BadImage(path, f"{what}, not a regular file", "not-a-file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    f = os.fdopen(fd, "rb", buffering=0)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadImage(path, f"{not_regular(st.st_mode)}, not a regular file", "not-a-file")
        return io.BufferedReader(_SizedReader(f, st.st_size))
    except BaseException:
        f.close()
        raise


def shown(path: str | os.PathLike) -> str:
    """`path` as printable text: bytes that are not UTF-8 (a Latin-1 'caf\\xe9' from the file system) written
    as \\xNN escapes instead of raising UnicodeEncodeError."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _listing(items: list[str], limit: int = 5) -> str:
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


@dataclass
class ImageScan:
    """The image files under some folders (`scan_images`), and what the walk left out and why."""

    files: list[list[Path]] = field(default_factory=list)  # per folder scanned, in walk order
    special: list[tuple[str, str]] = field(default_factory=list)  # (path, what it is): not regular files, never read
    loops: list[tuple[str, str]] = field(default_factory=list)  # (link, where it points): folder links not followed
    twice: list[tuple[str, str]] = field(default_factory=list)  # (path kept, path skipped): one file, two paths

    def warn(self) -> None:
        """One warning line per kind of thing left out, naming the files (on stderr, like the bad-images warning)."""
        if self.special:
            print(f"warning: skipped {len(self.special)} file(s) that are not regular files (never read): "
                  + _listing([f"{shown(p)} ({why})" for p, why in self.special]), file=sys.stderr)
        if self.loops:
            print(f"warning: did not follow {len(self.loops)} folder link(s) leading back into a folder above them "
                  "or one already read (a loop would list its images again, under the wrong class): "
                  + _listing([f"{shown(p)} -> {shown(to)}" for p, to in self.loops]), file=sys.stderr)
        if self.twice:
            print(f"warning: {len(self.twice)} image file(s) are reached by two paths (links); each is read once: "
                  + _listing([f"kept {shown(k)}, skipped {shown(s)}" for k, s in self.twice]), file=sys.stderr)


def _walk_images(top: Path, scan: ImageScan) -> list[tuple[Path, tuple[int, int], bool]]:
    """(path, (st_dev, st_ino), reached through a folder link below `top`) for each image file under `top`.

    The order is os.walk's top-down order with sorted names. Folder links are followed (a class folder linked from
    elsewhere is legitimate) except into a folder that contains the link (`cls/again -> ..` would list the whole
    dataset again inside one class) or one this walk has already read through a link: so the walk ends, and reads
    each real folder at most twice, once by its own path and once through a link (scan_images keeps one path)."""
    out = []
    try:
        st = os.stat(top)
    except OSError:
        return out
    seen = {(st.st_dev, st.st_ino)}  # folders read, by any path
    own = set(seen)  # folders read by a path without links (a bind mount can still loop: read once)
    stack = [(top, False)]
    while stack:
        folder, linked = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:  # unreadable folder: os.walk skipped it the same way
            continue
        here = None
        subdirs = []
        for e in entries:
            if e.name.startswith("."):  # macOS ._x.jpg resource forks, .ipynb_checkpoints
                continue
            path = folder / e.name
            try:
                is_dir = e.is_dir()
                st = e.stat() if is_dir or is_image_file(e.name) else None
            except OSError:  # a broken link (kept if named like an image: decoding reports it as unreadable)
                if is_image_file(e.name):
                    out.append((path, (-1, len(out)), linked))
                continue
            if is_dir:
                key, link = (st.st_dev, st.st_ino), e.is_symlink()
                if link:
                    here = here or os.path.realpath(folder)
                    real = os.path.realpath(path)
                    if key in seen or here == real or here.startswith(real.rstrip(os.sep) + os.sep):
                        scan.loops.append((str(path), os.readlink(path)))
                        continue
                elif key in (seen if linked else own):
                    continue
                seen.add(key)
                if not (linked or link):
                    own.add(key)
                subdirs.append((path, linked or link))
            elif st is not None:
                if not stat.S_ISREG(st.st_mode):
                    scan.special.append((str(path), special_file(path) or not_regular(st.st_mode)))
                    continue
                out.append((path, (st.st_dev, st.st_ino), linked))
        stack.extend(reversed(subdirs))
    return out


def scan_images(folders: list[str | Path]) -> ImageScan:
    """The image files under each of `folders`, recursively, in a stable (sorted) order (`ImageScan.files`).

    Hidden files and folders are skipped (macOS `._x.jpg` resource forks, `.ipynb_checkpoints`), and so are files
    that are not regular (FIFOs, devices: `special`). Folder links are followed except back into a folder above
    them or one already read (`loops`). One file reached by two paths (a link to a sibling class, a hard link) is
    listed once (`twice`), under the path that goes through no folder link, else under the first one: a link never
    takes an image away from the class folder that holds it."""
    scan = ImageScan()
    walks = [_walk_images(Path(f), scan) for f in folders]
    best: dict[tuple[int, int], tuple[int, int]] = {}  # file -> (walk, index) of the path kept
    for w, found in enumerate(walks):
        for i, (path, key, linked) in enumerate(found):
            if key[0] == -1:
                continue
            if key not in best:
                best[key] = (w, i)
            elif walks[best[key][0]][best[key][1]][2] and not linked:
                best[key] = (w, i)
    for w, found in enumerate(walks):
        kept = []
        for i, (path, key, _) in enumerate(found):
            if key[0] == -1 or best[key] == (w, i):
                kept.append(path)
            else:
                kw, ki = best[key]
                scan.twice.append((str(walks[kw][ki][0]), str(path)))
        scan.files.append(kept)
    return scan


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (`scan_images`), with one warning for each kind of file left out."""
    scan = scan_images([folder])
    scan.warn()
    return scan.files[0]


def open_image(src, draft: int | None = None) -> Image.Image:
    """Open and fully decode `src` (a path, raw bytes, a PIL image, or a lazy item with an `open()` method such as
    a user Dataset's item, data/user.py); raise BadImage on failure.

    draft: a JPEG is decoded with DCT scaling (`set_draft`) to sides of at least `draft` pixels (other formats are
    decoded whole).
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
            fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else open_regular(src)
            with fp:
                img = Image.open(fp)
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise BadImage(name, f"{w}x{h} pixels is over the limit of {MAX_PIXELS:,}", "too-large")
                set_draft(img, draft)
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


def _bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow stores per pixel of `mode`: 1 for '1', 'L', 'P'; 2 for 16-bit grey; 4 for the rest (RGB too,
    which Pillow pads to 4 bytes; I, F, RGBA, CMYK, LA, ...)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def _deep_to_l(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float image scaled to 8-bit 'L' by its range, a tile of ~TILE_PIXELS at a time.

    The formula is the one tudui has always used, `clip(v / top * 255 + 0.5, 0, 255)` in float64 (`top`: 65535 for
    16-bit; for 'I' 65535 when any value is over 255, else 255; for 'F' 1.0 when no value is over 1, else 255), so
    every pixel is the same as before; only the float64 temporaries are per tile (~2 MB each) instead of 8 bytes
    per pixel of the whole image (a 64-Mpx 16-bit PNG cost 1.6 GB; now its own 128 MB plus the 64 MB result).
    """
    w, h = img.size
    tile_w = min(w, TILE_PIXELS)  # a 64,000,000 x 1 image is cut along its row too
    tile_h = max(1, TILE_PIXELS // tile_w)
    boxes = [(x, y, min(w, x + tile_w), min(h, y + tile_h)) for y in range(0, h, tile_h) for x in range(0, w, tile_w)]

    def tiles():  # (box, its pixels as an array); crop copies only the tile
        for box in boxes:
            yield box, np.asarray(img.crop(box))

    if img.mode.startswith("I;16"):
        top = 65535.0
    else:  # the whole image's maximum (NaN included, as ndarray.max gives it) decides the range
        peak = np.max([t.max() for _, t in tiles()]) if boxes else np.nan  # no pixels: 255, as before
        top = (1.0 if peak <= 1.0 else 255.0) if img.mode == "F" else (65535.0 if peak > 255 else 255.0)
    out = np.empty((h, w), np.uint8)  # (H, W): 1 byte per pixel, the only full-size array
    if img.mode.startswith("I;16"):  # the formula tabulated once for all 65,536 values: exact, and a lookup
        lut = np.clip(np.arange(65536, dtype=np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    for (x0, y0, x1, y1), t in tiles():
        if img.mode.startswith("I;16"):
            out[y0:y1, x0:x1] = lut[t]
        else:
            out[y0:y1, x0:x1] = np.clip(t.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to 'L' (channels=1) or 'RGB' (channels=3); a grey image stays 'L' for channels=3
    (decode_image makes it RGB after resizing: three equal channels resize to the same pixels as one, with a
    quarter of the memory).

    Alpha is dropped (as `convert('RGB')` does), palettes are expanded, CMYK is
    converted, and 16/32-bit or float images are scaled to 8 bits by their range (`_deep_to_l`).
    """
    if img.mode in _DEEP_MODES:
        img = _deep_to_l(img)
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("1", "L", "LA"):
        return img if img.mode == "L" else img.convert("L")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def decode_cost(img: Image.Image, channels: int, size: int | None, crop_pct: float | None = None) -> int:
    """Bytes of memory `decode_image(..., channels, size, crop_pct)` needs at most for an opened image whose
    pixels are not loaded yet (its header read by Image.open; a JPEG is set to the draft scale decode_image uses).

    The most of: twice the decoded image while decoding (the image, and a decoder's own full-size buffer such as a
    single-strip TIFF's; later the image and an EXIF-rotated copy; WebP four times), plus the decoder's row buffers;
    or the image and the conversion's images alive at once (8-bit grey 1 byte per pixel, RGB 4, a palette with
    transparency RGBA then RGB 8); plus the resize's filter coefficients, first pass and output (at most
    RESIZE_BYTES: `_resize`). An estimate from measured peaks, not a guarantee for every format Pillow reads.
    """
    set_draft(img, _draft_side(size, crop_pct))  # as open_image does: the size and mode decoding will produce
    w, h = img.size
    bpp = _bytes_per_pixel(img.mode)
    if img.mode == "P":
        extra = 8
    elif img.mode in _DEEP_MODES or img.mode in ("1", "L", "LA") or channels == 1:
        extra = 1
    else:
        extra = 0 if img.mode == "RGB" else 4
    # Pillow keeps a pointer per row (8 bytes): a 1 x 8,000,000 image's are 64 MB.
    image = w * h * bpp + 8 * h
    # WebP (Pillow's animation decoder) holds its canvas, the previous frame's and a bytes copy besides the image:
    # a 64-Mpx RGBA WebP measured 980 MB, 15 bytes per pixel. A decoder's row buffers (a PNG filter's previous and
    # current row, up to 8 bytes per pixel each: 128 MB for an 8,000,000 x 1 16-bit RGBA PNG) come on top.
    decoding = (4 if img.format == "WEBP" else 2) * image + DECODER_ROW_BYTES * w
    converting = image + w * h * extra + 16 * h
    if size is None:
        resize = 0
    else:  # in the mode _to_mode gives (L: 1 byte, RGB: 4), at most RESIZE_BYTES (_resize box-reduces beyond it)
        new = (size, size) if crop_pct is None else _crop_geometry(w, h, size, crop_pct)[0]
        grey = img.mode in _GRAY_MODES or channels == 1
        resize = min(RESIZE_BYTES, _resample_cost((w, h), new, 1 if grey else 4) + 4 * size * size)
    return max(decoding, converting) + resize + DECODE_SLACK


def resize_side(size: int, crop_pct: float) -> int:
    """The short side an image is resized to before a centre crop of `size` (timm's `floor(size / crop_pct)`:
    256 for 224 at 0.875, torchvision's Resize(256) + CenterCrop(224))."""
    return max(size, int(math.floor(size / crop_pct + 1e-6)))


def set_draft(img: Image.Image, side: int | None) -> None:
    """Have a JPEG whose pixels are not loaded yet decoded at the smallest of 1/8, 1/4, 1/2 of its size that divides
    both its sides and keeps the short one at least `side` pixels (else whole; other formats always whole). The
    short side: the same scale whatever the EXIF rotation."""
    if not side or img.format != "JPEG":
        return
    w, h = img.size
    for scale in (8, 4, 2):
        if w % scale == 0 and h % scale == 0 and min(w, h) >= scale * side:  # each pixel one scale x scale block
            img.draft(None, (w // scale, h // scale))
            return


def _draft_side(size: int | None, crop_pct: float | None) -> int | None:
    """The smallest side a JPEG is decoded at (DCT scaling) for this output, or None: decode it whole."""
    target = size if size is None or crop_pct is None else resize_side(size, crop_pct)
    return math.ceil(target * DRAFT_GAP) if target else None


def _resample_bytes(img: Image.Image, new: tuple[int, int], interpolation: str = "bilinear") -> int:
    """Bytes Pillow's resize of `img` to `new` allocates (see `_resample_cost`)."""
    return _resample_cost(img.size, new, _bytes_per_pixel(img.mode), RESAMPLE[interpolation][1])


def _resample_cost(size: tuple[int, int], new: tuple[int, int], bpp: int, support: int = 1) -> int:
    """Bytes a resize from `size` to `new` allocates: coefficients per axis (8-byte doubles, ~2 x `support` per
    source pixel when shrinking, per output pixel when enlarging; support 1 bilinear, 2 bicubic), the horizontal
    pass's (new width x height) image and the output, `bpp` bytes per pixel."""
    (w, h) = size
    return 16 * support * (w + h + new[0] + new[1]) + (new[0] * h + new[0] * new[1]) * bpp


def _resize(img: Image.Image, new: tuple[int, int], box: tuple[float, float, float, float] | None = None,
            interpolation: str = "bilinear"):
    """Antialiased resize with the named filter (RESAMPLE); box-reduced first when the plain resize would take over
    RESAMPLE_BYTES (only extreme aspect ratios: every other image gets exactly Pillow's plain resize)."""
    resample = RESAMPLE[interpolation][0]
    if box is None and _resample_bytes(img, new, interpolation) <= RESAMPLE_BYTES:
        return img.resize(new, resample)
    return img.resize(new, resample, box=box, reducing_gap=REDUCING_GAP)


def _crop_geometry(w: int, h: int, size: int, crop_pct: float) -> tuple[tuple[int, int], int, int]:
    """(resized size, crop's left, crop's top) of `_resize_crop` for a w x h image."""
    side = resize_side(size, crop_pct)
    if w <= h:
        new = (side, max(side, int(side * h / w)))
    else:
        new = (max(side, int(side * w / h)), side)
    return new, int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))


def _resize_crop(img: Image.Image, size: int, crop_pct: float, interpolation: str = "bilinear") -> Image.Image:
    """Resize the short side to resize_side(size, crop_pct), then cut the centre size x size (torchvision's
    Resize(int) + CenterCrop: the long side is int(side * long / short), the crop's corner rounds half away)."""
    w, h = img.size
    new, left, top = _crop_geometry(w, h, size, crop_pct)
    if new != img.size and _resample_bytes(img, new, interpolation) > RESAMPLE_BYTES:
        # The whole resized image would be huge (a 64,000,000 x 1 image at side 256 is 16e9 x 256): resize only the
        # source box that becomes the crop (the same sampling positions), box-reduced first.
        sx, sy = w / new[0], h / new[1]
        return _resize(img, (size, size), (left * sx, top * sy, (left + size) * sx, (top + size) * sy), interpolation)
    if new != img.size:
        img = img.resize(new, RESAMPLE[interpolation][0])
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
        with open_regular(path) as f:
            data = f.read()
    except (OSError, BadImage):  # Pillow's path says what is wrong with it
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
                 crop_pct: float | None = None, interpolation: str = "bilinear") -> np.ndarray:
    """Decode `src` into a (size, size, channels) uint8 array.

    EXIF orientation is applied and the mode is converted by `_to_mode`. Then, with `crop_pct` None, the image is
    resized to size x size (squashed, antialiased with the `interpolation` filter, bilinear by default: tudui's
    recipe for small images; a timm model's weights may ask for bicubic); with a
    `crop_pct` in (0, 1], its short side is resized to `resize_side(size, crop_pct)` and the centre size x size is
    cut out (the photo recipe, aspect ratio kept). Large JPEGs are DCT-scaled while decoding (see DRAFT_GAP).
    `size=None` keeps the image's own size. Memory: at most `decode_cost` bytes (16-bit and float images are
    converted a tile at a time, extreme aspect ratios are box-reduced before resizing).
    """
    if crop_pct is None and isinstance(src, (str, Path)) and str(src).lower().endswith(".png"):
        arr = _decode_plain_png(src, channels, size)
        if arr is not None:
            return arr
    img = open_image(src, draft=_draft_side(size, crop_pct))
    try:
        # An image opened here is rotated in place: without an orientation tag, exif_transpose would return a copy
        # (as much memory again: 256 MB for a 64-Mpx RGBA); the caller's own PIL image is not changed.
        if isinstance(src, (str, Path, bytes, bytearray)):
            ImageOps.exif_transpose(img, in_place=True)
        else:
            img = ImageOps.exif_transpose(img)
        img = _to_mode(img, channels)  # 'L' or 'RGB'; a grey image stays 'L' until after the resize
        if size is not None and crop_pct is not None:
            img = _resize_crop(img, size, crop_pct, interpolation)
        elif size is not None and img.size != (size, size):
            img = _resize(img, (size, size), interpolation=interpolation)
        if channels == 3 and img.mode == "L":
            img = img.convert("RGB")
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
        with open_regular(path) as f, Image.open(f) as img:
            return img.size, img.mode
    except Exception:  # noqa: BLE001 - any failure means "not usable", reported later
        return None


def gray_mode(mode: str) -> bool:
    return mode in _GRAY_MODES


def seen_region(src, size: int, crop_pct: float | None) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """(the image as given: EXIF orientation applied, RGB; the part of it `decode_image` gives the model, as
    (x0, y0, x1, y1) in its pixels): the whole image for a squash model, the centre crop's source box for a crop
    model. What a class-activation map is drawn over."""
    img = open_image(src)
    try:
        img = _to_mode(ImageOps.exif_transpose(img), 3)  # 16-bit and float images as decode_image reads them
        img = img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, ValueError) as e:
        raise BadImage(src if not isinstance(src, (bytes, bytearray)) else "<bytes>", f"cannot convert ({e})") from None
    w, h = img.size
    if crop_pct is None:
        return img, (0.0, 0.0, float(w), float(h))
    new, left, top = _crop_geometry(w, h, size, crop_pct)
    sx, sy = w / new[0], h / new[1]
    return img, (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
