"""The data factory: `build_data` turns a TrainConfig's data options into a DataBundle.

sources / folders / a user's Dataset -> splits (load_splits) -> the DataSpec measured from the training split ->
each split decoded into memory, the disk cache or left as files (load_decoded), ready for loaders.make_loader.
"""
from __future__ import annotations

import shlex
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.config import MEMORY_LIMIT_MB, TrainConfig
from ..core.console import shown
from ..core.errors import TuduiError
from ..core.modes import AUGMENTS, AUTO_AUGMENT
from ..core.options import EVAL_BATCH_SIZE, option_text
from ..core.pyfile import is_file_ref, load_object
from .cache import cached_split
from .folders import read_folder_splits, split_folders
from .images import RESAMPLE, gray_mode, peek_image, resize_side
from .labels import LabelReading
from .loaders import decode_split
from .overlap import same_files, warn_overlap
from .sources import NAMED, load_named
from .spec import DataSpec, Layout, eval_layout
from .split import Split, as_multi_hot, concat_splits, require_two_classes, stratified_split
from .user import splits_from_object

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

IMAGENET_CROP_PCT = 0.875  # torchvision's and timm's ImageNet evaluation: resize to 256, centre crop 224
VAL_SPLIT = TrainConfig.__dataclass_fields__["val_split"].default  # --val-split not given (or given as the default)
PHOTO_MIN_SIDE = 64  # smallest native short side (px) of RGB images that get the photo recipe


def eval_batch_size(train_batch_size: int = 0) -> int:
    """Evaluation batch: at least EVAL_BATCH_SIZE, or the training batch when that is larger."""
    return max(train_batch_size, EVAL_BATCH_SIZE)


def fits_in_memory(split: Split, channels: int, size: int, limit_mb: int = MEMORY_LIMIT_MB) -> bool:
    """Whether `split` decoded to uint8 (N x channels x size x size bytes) fits `limit_mb` (arrays already in memory
    always do; rows memory-mapped from the disk cache count by their size)."""
    if split.images is not None and not hasattr(split.images, "release"):
        return True
    return len(split) * channels * size * size <= limit_mb * 2**20


def train_layout(spec: DataSpec, augment: str) -> Layout:
    """What a training row holds: for photo augmentation with an evaluation crop, the centre square of each photo at
    the evaluation resize side (256 for 224 at 0.875), the margin random-resized-crop cuts from; else the same
    pixels as evaluation."""
    if AUGMENTS[augment].photo and spec.crop_pct:
        return Layout(spec.channels, resize_side(spec.img_size, spec.crop_pct), 1.0, spec.interpolation)
    return eval_layout(spec)


@dataclass
class DataBundle:
    spec: DataSpec
    train: Split | None
    val: Split | None
    test: Split | None
    in_memory: bool
    augment: str = "flip"  # the resolved --augment ("auto" chosen by the data)
    train_layout: Layout | None = None  # what a training row holds (None: the spec's evaluation layout)
    notes: list[str] = field(default_factory=list)  # how each split was obtained, for the run's first line
    photo: bool = False  # RGB photos at least the training size (the photo recipe's trigger)
    said: list[str] = field(default_factory=list)  # lines for under the run's first line (an option not used)


def _load_one(entry, data_root: str | None, download: bool, classes: list[str] | None,
              reading: LabelReading = LabelReading()) -> dict[str, Split]:
    if not isinstance(entry, str):  # the library's own Dataset objects
        return splits_from_object(entry, type(entry).__name__, classes, task=reading.task)
    if is_file_ref(entry):  # --data data.py:name
        obj, _, name = load_object(entry, "dataset", whole=True)  # its Datasets are made by its statements
        return splits_from_object(obj, name, classes, ref=entry, task=reading.task)
    if entry.lower() in NAMED:
        name = entry.lower()
        if reading.task == "multi":
            raise TuduiError(f"--task multi: {entry} has one class per image; train it with --task auto or single")
        return {"train": load_named(name, True, data_root, download),
                "test": load_named(name, False, data_root, download)}
    return read_folder_splits(entry, reading)


def _assemble(loaded: list[dict[str, Split]], val_split: float, seed: int) -> tuple[Split, Split | None, Split | None]:
    """(train, val, test) of loaded entries: each split concatenated over them; val held out of train, stratified
    and seeded, when no entry has one."""
    train = concat_splits([s["train"] for s in loaded])
    val_parts = [s["val"] for s in loaded if "val" in s]
    test_parts = [s["test"] for s in loaded if "test" in s]
    val = concat_splits(val_parts) if val_parts else None
    test = concat_splits(test_parts) if test_parts else None
    if val is None and val_split > 0:
        if not 0 < val_split < 1:
            raise TuduiError(f"--val-split must be in (0, 1), got {val_split}")
        keep, held = stratified_split(train.targets, val_split, seed)
        train, val = train.subset(keep), (train.subset(held) if len(held) else None)
    return train, val, test


def reading_of(cfg) -> LabelReading:
    """How a TrainConfig's data is labelled: --csv-columns, --task, and --classes for CSVs and label files."""
    return LabelReading.of(getattr(cfg, "csv_columns", None), getattr(cfg, "task", "auto"), cfg.classes)


def _no_data() -> TuduiError:
    return TuduiError(f"no --data given; name a dataset ({', '.join(NAMED)}), "
                      "a folder of class subfolders, or a CSV of path,label")


def load_splits(data: list, data_root: str | None = None, download: bool = False, val_split: float = 0.1,
                seed: int = 0, subset: int | None = None, classes: list[str] | None = None,
                fraction: float = 1.0, said: list[str] | None = None,
                reading: LabelReading | None = None) -> tuple[Split, Split | None, Split | None]:
    """(train, val, test) from one or more `--data` entries; val held out of train when absent (`said` gets a line
    when a --val-split given is not used because the data has its own validation split).

    An entry is a dataset name, a folder, a CSV, 'file.py:name', or (library) a Dataset, a list of them or a
    dict {'train': ..., 'val': ..., 'test': ...}; `classes` names a user Dataset's classes in output order;
    `reading`: how CSVs and label files are read (--csv-columns, --task; data/labels.py).
    """
    if not data:
        raise _no_data()
    reading = reading or LabelReading()
    loaded = [_load_one(d, data_root, download, classes, reading) for d in data]
    train, val, test = _assemble(loaded, val_split, seed)
    if reading.task == "multi" or train.multi:  # every split multi-hot when any is (a val/ of one label each)
        train, val, test = (None if s is None else as_multi_hot(s) for s in (train, val, test))
    val_parts = [s["val"] for s in loaded if "val" in s]
    if val_parts and said is not None and val_split != VAL_SPLIT:
        said.append(f"--val-split {val_split:g} not used: the data has its own validation split ({len(val):,} images "
                    f"in {', '.join(dict.fromkeys(shown(p.origin) for p in val_parts))}), which is validated on; move "
                    "those images into train/ to hold out a share instead")
    if fraction < 1:  # --fraction: a seeded random share of the training images
        subset = min(subset or len(train), max(1, round(fraction * len(train))))
    if subset is not None and subset < len(train):
        train = train.subset(np.sort(np.random.default_rng(seed).permutation(len(train))[:subset]))
    # Every split must use the training class list (a val folder may lack a class).
    for s in (val, test):
        if s is not None:
            s.reindex(train.classes)
    require_two_classes(train)
    return train, val, test


def load_eval_split(data: list, split: str = "auto", data_root: str | None = None, val_split: float = 0.1,
                    seed: int = 0, reading: LabelReading | None = None) -> tuple[Split, str]:
    """(the split `tudui eval` scores, its name) from `--data` entries, in the data's own class order.

    split: 'test', 'val' (the data's val folder, or the training run's hold-out re-created from `val_split` and
    `seed`), 'train' (less that hold-out), 'all' (every image of the data, nothing held out) or 'auto': 'test' where
    the data has a test split, 'all' where no entry has any split structure (a folder of class folders, a CSV).
    Images of any subset of the classes are scored; the caller maps them to the model's classes.
    """
    if not data:
        raise _no_data()
    loaded = [_load_one(d, data_root, False, None, reading or LabelReading()) for d in data]
    if split == "auto":
        unsplit = all(set(s) == {"train"} for s in loaded) and \
            not any(isinstance(d, str) and split_folders(Path(d).expanduser()) for d in data)  # a lone train/
        split = "all" if unsplit else "test"
    if split == "all":  # every split of every entry, in train, val, test order
        return concat_splits([s[k] for s in loaded for k in ("train", "val", "test") if k in s]), split
    train, val, test = _assemble(loaded, val_split, seed)
    chosen = {"train": train, "val": val, "test": test}[split]
    if chosen is None:
        raise TuduiError(f"the data has no {split} split; use --split " + ("val" if val is not None else "train")
                         + ", or --split all for every image of it")
    return chosen, split


def _native_format(split: Split) -> tuple[int, int, int]:
    """(size, channels, median short side) the data already has: arrays as stored; files from a sample of headers.

    size is the most common short side, at most 224 (the default --img-size)."""
    if split.images is not None:
        return split.images.shape[1], split.images.shape[3], split.images.shape[1]
    heads = [h for h in (peek_image(p) for p in split.paths[:: max(1, len(split.paths) // 200)]) if h]
    if not heads:
        return 224, 3, 224
    (w, h), _ = Counter(size for size, _ in heads).most_common(1)[0]
    short = int(statistics.median(min(size) for size, _ in heads))
    return min(224, min(w, h)), (1 if all(gray_mode(m) for _, m in heads) else 3), short


def input_format(cfg) -> tuple[int, int, int]:
    """(side, channels, classes) a run of `cfg` (a TrainConfig) trains on, from --img-size/--channels or the data's
    own format, without decoding any image (file headers only): what `tudui tune`'s default space fits models to."""
    train, _, _ = load_splits(cfg.data, cfg.data_root, False, cfg.val_split, cfg.seed, cfg.subset, cfg.classes,
                              cfg.fraction, None, reading_of(cfg))
    native_size, native_ch, _ = _native_format(train)
    return cfg.img_size or native_size, cfg.channels or native_ch, len(train.classes)


def _measure_mean_std(split: Split, layout: Layout) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] over the training images (a 2,000-image sample for files and cached rows)."""
    if split.images is not None and not hasattr(split.images, "release"):
        imgs = split.images
    elif split.images is not None:  # memory-mapped cache rows: a sorted sample, read in order
        imgs = split.images.read_rows(np.arange(0, len(split), max(1, len(split) // 2000)))
        split.images.release()
    else:
        step = max(1, len(split.paths) // 2000)
        arrs = []
        for p in split.paths[::step]:
            try:
                arrs.append(layout.decode(p))
            except TuduiError:
                continue
        imgs = np.stack(arrs)
    x = torch.from_numpy(imgs).reshape(-1, layout.channels).to(torch.float64) / 255.0
    return x.mean(0).tolist(), x.std(0).clamp_min(1e-3).tolist()


def load_decoded(split: Split, layout: Layout, cache: str = "auto", memory: str = "auto",
                 limit_mb: int = MEMORY_LIMIT_MB, bad_images: str = "skip",
                 in_memory: bool | None = None) -> tuple[Split, bool, str]:
    """(split ready for `make_loader`, held in memory?, how it was obtained) for one split and its layout.

    Arrays (named datasets) are converted in memory. Image files, with cache 'disk' (or 'auto'), come from the
    disk cache (data/cache.py), held in memory when they fit `limit_mb` (memory 'auto') and memory-mapped batch by
    batch otherwise; with 'ram' they are decoded into memory when they fit; with 'off', or when they do not fit,
    they are decoded from their files every epoch. `in_memory` forces the decision (the other splits of a run
    follow the training split's).
    """
    if split.images is not None:  # a named dataset's arrays
        return decode_split(split, layout.channels, layout.size, bad_images, layout.crop_pct), True, "in memory"
    files = all(isinstance(p, str) for p in split.paths)
    mode = cache if cache != "auto" else ("disk" if files else "ram")
    if mode == "disk" and not files:
        raise TuduiError("--cache disk holds image files; your own Dataset's items are decoded in memory "
                         "(--cache ram) or every epoch (--cache off)")
    if mode == "off" and memory == "on":
        raise TuduiError("--memory on holds decoded images in memory, --cache off decodes them every epoch; drop one")
    if mode == "disk":
        got = cached_split(split, layout, bad_images)
        keep = in_memory if in_memory is not None else \
            memory == "on" or (memory == "auto" and fits_in_memory(got.split, layout.channels, layout.size, limit_mb))
        how = ("in memory" if keep else "memory-mapped") + f" ({got.describe()})"
        return got.split, keep, how
    keep = in_memory if in_memory is not None else \
        mode == "ram" and memory != "off" and (memory == "on" or fits_in_memory(split, layout.channels, layout.size,
                                                                                 limit_mb))
    if keep:
        return decode_split(split, layout.channels, layout.size, bad_images, layout.crop_pct), True, "in memory"
    return split, False, "from files"


def resolve_augment(augment: str, photo: bool) -> str:
    """--augment auto: the photo recipe for RGB photos, horizontal flips (today's recipe) for everything else."""
    return AUTO_AUGMENT[photo] if augment == "auto" else augment


def build_data(cfg, default_norm: tuple[list[float], list[float]] | None = None,
               default_crop: float | None = None, default_channels: int | None = None,
               default_size: int | None = None, default_interpolation: str | None = None, before_decoding: Callable[[DataSpec], None] | None = None) -> DataBundle:
    """Load the splits named by `cfg` (a TrainConfig) and resolve the DataSpec and how each split is held.

    default_norm / default_crop: the pretrained weights' mean/std (ImageNet's, or a tudui checkpoint's own) and
    evaluation crop, if any.
    default_size: the pretrained weights' input side, used when --img-size is not given (timm's pretrained_cfg).
    default_interpolation: the resize filter the pretrained weights were trained on (timm's pretrained_cfg), used
    for every decode of this run (bilinear otherwise).
    default_channels: the input channels of a model given already built, used when --channels is not given
    (greyscale images are replicated to RGB for a 3-channel model, as PIL's convert('RGB') does).
    before_decoding: called with the DataSpec (classes, size, channels; mean/std not yet measured) once it is known
    and before any image is decoded or a decoded-image cache written, so a run the model refuses (too small an
    --img-size, a size its layers cannot take) leaves nothing behind.
    """
    said: list[str] = []
    train, val, test = load_splits(cfg.data, cfg.data_root, cfg.download, cfg.val_split, cfg.seed, cfg.subset,
                                   cfg.classes, cfg.fraction, said, reading_of(cfg))
    native_size, native_ch, native_short = _native_format(train)
    size, channels = cfg.img_size or default_size or native_size, cfg.channels or default_channels or native_ch
    if channels not in (1, 3):
        raise TuduiError(f"{option_text('channels')} must be 1 or 3, got {channels}")
    if size < 4:
        raise TuduiError(f"{option_text('img_size')} must be at least 4 pixels, got {size}")
    # Photos: RGB image files whose native short side is at least the training size (and not tiny): they get
    # random-resized-crop training and resize + centre-crop evaluation. Built-in sets and small images keep the
    # squash-to-square recipe.
    photo = train.paths is not None and channels == 3 and native_short >= max(PHOTO_MIN_SIDE, size)
    augment = resolve_augment(cfg.augment, photo)
    if cfg.crop_pct is not None:
        crop_pct = cfg.crop_pct or None  # 0: squash
    else:
        crop_pct = (default_crop or IMAGENET_CROP_PCT) if photo else None
    names = [d.lower() for d in cfg.data if isinstance(d, str)]
    hflip = cfg.hflip if cfg.hflip is not None else all(NAMED[n].hflip for n in names if n in NAMED)
    spec = DataSpec(classes=list(train.classes), img_size=size, channels=channels, mean=[0.0] * channels,
                    std=[1.0] * channels, hflip=hflip, tta=bool(cfg.tta and hflip), crop_pct=crop_pct,
                    multi_label=train.multi,
                    interpolation=default_interpolation if default_interpolation in RESAMPLE else "bilinear")
    if before_decoding is not None:
        before_decoding(spec)
    t_layout, e_layout = train_layout(spec, augment), eval_layout(spec)
    by_file = {n: same_files(train, s) for n, s in (("val", val), ("test", test)) if s is not None}  # while files
    opts = dict(cache=cfg.cache, memory=cfg.memory, limit_mb=cfg.memory_limit_mb, bad_images=cfg.bad_images)
    train, in_memory, how = load_decoded(train, t_layout, **opts)
    notes = [f"train {how}"]
    if val is not None:
        val, _, how = load_decoded(val, e_layout, **opts, in_memory=in_memory)
        notes.append(f"val {how}")
    if test is not None:
        test, _, how = load_decoded(test, e_layout, **opts, in_memory=in_memory)
        notes.append(f"test {how}")
    warn_overlap(train, {"val": val, "test": test}, by_file, in_memory,
                 shlex.join(d if isinstance(d, str) else type(d).__name__ for d in cfg.data))
    if cfg.mean is not None or cfg.std is not None:
        if cfg.mean is None or cfg.std is None or len(cfg.mean) != channels or len(cfg.std) != channels:
            raise TuduiError(f"--mean and --std need {channels} value(s) each (one per channel)")
        mean, std = [float(m) for m in cfg.mean], [float(s) for s in cfg.std]
        if not all(0 < s < float("inf") for s in std):  # NaN fails too: every pixel is divided by it
            raise TuduiError(f"--std must be finite and positive (one per channel), got {' '.join(map(str, std))}")
    elif default_norm is not None:  # for another channel count: their average per grey channel, repeated for RGB
        mean, std = (v if len(v) == channels else [sum(v) / len(v)] * channels for v in default_norm)
    else:
        mean, std = _measure_mean_std(train, t_layout)
    spec.mean, spec.std = list(mean), list(std)
    return DataBundle(spec, train, val, test, in_memory, augment, t_layout, notes, photo, said)
