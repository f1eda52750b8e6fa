"""Data: sources -> splits -> DataSpec -> uint8 batches. `build_data` is the one factory."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from ..core.config import MEMORY_LIMIT_MB
from ..core.errors import TuduiError
from ..core.pyfile import is_file_ref, load_object
from .folders import read_folder_splits
from .images import decode_image, gray_mode, peek_image
from .memory import MemoryLoader, decode_split, file_loader, to_tensor
from .sources import NAMED, load_named
from .user import splits_from_object
from .split import Split, concat_splits, stratified_split
from .transforms import DataSpec, augment_batch, augment_options, denormalize, eval_transforms, model_logits, normalize

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
EVAL_BATCH_SIZE = 512  # images per evaluation batch (no gradients: larger batches cost little memory)

__all__ = ["DataBundle", "DataSpec", "Split", "build_data", "load_splits", "make_loader", "normalize", "denormalize",
           "model_logits", "augment_batch", "augment_options", "eval_transforms", "decode_image", "eval_batch_size",
           "fits_in_memory", "IMAGENET_MEAN", "IMAGENET_STD", "EVAL_BATCH_SIZE", "MEMORY_LIMIT_MB"]


def eval_batch_size(train_batch_size: int = 0) -> int:
    """Evaluation batch: at least EVAL_BATCH_SIZE, or the training batch when that is larger."""
    return max(train_batch_size, EVAL_BATCH_SIZE)


def fits_in_memory(split: Split, channels: int, size: int, limit_mb: int = MEMORY_LIMIT_MB) -> bool:
    """Whether `split` decoded to uint8 (N x channels x size x size bytes) fits `limit_mb` (arrays always do)."""
    return split.images is not None or len(split) * channels * size * size <= limit_mb * 2**20


@dataclass
class DataBundle:
    spec: DataSpec
    train: Split | None
    val: Split | None
    test: Split | None
    in_memory: bool


def _load_one(entry, data_root: str | None, download: bool, classes: list[str] | None) -> dict[str, Split]:
    if not isinstance(entry, str):  # the library's own Dataset objects
        return splits_from_object(entry, type(entry).__name__, classes)
    if is_file_ref(entry):  # --data data.py:name
        obj, _, name = load_object(entry, "dataset")
        return splits_from_object(obj, name, classes)
    if entry.lower() in NAMED:
        name = entry.lower()
        return {"train": load_named(name, True, data_root, download),
                "test": load_named(name, False, data_root, download)}
    return read_folder_splits(entry)


def load_splits(data: list, data_root: str | None = None, download: bool = False, val_split: float = 0.1,
                seed: int = 0, subset: int | None = None, classes: list[str] | None = None,
                fraction: float = 1.0) -> tuple[Split, Split | None, Split | None]:
    """(train, val, test) from one or more `--data` entries; val held out of train when absent.

    An entry is a dataset name, a folder, a CSV, 'file.py:name', or (library) a Dataset, a list of them or a
    dict {'train': ..., 'val': ..., 'test': ...}; `classes` names a user Dataset's classes in output order.
    """
    if not data:
        raise TuduiError("no --data given; name a dataset (fashion-mnist, mnist, cifar10, cifar100, digits), "
                         "a folder of class subfolders, or a CSV of path,label")
    loaded = [_load_one(d, data_root, download, classes) for d in data]
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
    if fraction < 1:  # --fraction: a seeded random share of the training images
        subset = min(subset or len(train), max(1, round(fraction * len(train))))
    if subset is not None and subset < len(train):
        train = train.subset(np.sort(np.random.default_rng(seed).permutation(len(train))[:subset]))
    # Every split must use the training class list (a val folder may lack a class).
    for s in (val, test):
        if s is not None:
            s.reindex(train.classes)
    if len(train.classes) < 2 or np.count_nonzero(train.counts()) < 2:
        raise TuduiError(f"the training data ({train.origin}) has only one class; a classifier needs at least two "
                         "(one subfolder per class)")
    return train, val, test


def _native_format(split: Split) -> tuple[int, int]:
    """(size, channels) the data already has: arrays as stored; files from a sample of headers."""
    if split.images is not None:
        return split.images.shape[1], split.images.shape[3]
    heads = [h for h in (peek_image(p) for p in split.paths[:: max(1, len(split.paths) // 200)]) if h]
    if not heads:
        return 224, 3
    (w, h), _ = Counter(size for size, _ in heads).most_common(1)[0]
    return min(224, min(w, h)), (1 if all(gray_mode(m) for _, m in heads) else 3)


def _measure_mean_std(split: Split, channels: int, size: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] over the training images (a 2,000-image sample for files)."""
    if split.images is not None:
        imgs = split.images
    else:
        step = max(1, len(split.paths) // 2000)
        arrs = []
        for p in split.paths[::step]:
            try:
                arrs.append(decode_image(p, channels, size))
            except TuduiError:
                continue
        imgs = np.stack(arrs)
    x = torch.from_numpy(imgs).reshape(-1, channels).to(torch.float64) / 255.0
    return x.mean(0).tolist(), x.std(0).clamp_min(1e-3).tolist()


def build_data(cfg, default_norm: tuple[list[float], list[float]] | None = None) -> DataBundle:
    """Load the splits named by `cfg` (a TrainConfig) and resolve the DataSpec."""
    train, val, test = load_splits(cfg.data, cfg.data_root, cfg.download, cfg.val_split, cfg.seed, cfg.subset,
                                   cfg.classes, cfg.fraction)
    native_size, native_ch = _native_format(train)
    size, channels = cfg.img_size or native_size, cfg.channels or native_ch
    if channels not in (1, 3):
        raise TuduiError(f"--channels must be 1 or 3, got {channels}")
    if size < 4:
        raise TuduiError(f"--img-size must be at least 4 pixels, got {size}")
    if cfg.memory == "on":
        in_memory = True
    elif cfg.memory == "off":
        in_memory = False
    else:
        in_memory = fits_in_memory(train, channels, size, cfg.memory_limit_mb)
    if in_memory:
        train = decode_split(train, channels, size, cfg.bad_images)
        val = val and decode_split(val, channels, size, cfg.bad_images)
        test = test and decode_split(test, channels, size, cfg.bad_images)
    if cfg.mean is not None or cfg.std is not None:
        if cfg.mean is None or cfg.std is None or len(cfg.mean) != channels or len(cfg.std) != channels:
            raise TuduiError(f"--mean and --std need {channels} value(s) each (one per channel)")
        mean, std = [float(m) for m in cfg.mean], [float(s) for s in cfg.std]
    elif default_norm is not None and channels == len(default_norm[0]):
        mean, std = default_norm
    else:
        mean, std = _measure_mean_std(train, channels, size)
    names = [d.lower() for d in cfg.data if isinstance(d, str)]
    hflip = cfg.hflip if cfg.hflip is not None else all(NAMED[n].hflip for n in names if n in NAMED)
    spec = DataSpec(classes=list(train.classes), img_size=size, channels=channels, mean=mean, std=std, hflip=hflip,
                    tta=bool(cfg.tta and hflip))
    return DataBundle(spec, train, val, test, in_memory)


def make_loader(split: Split, spec: DataSpec, batch_size: int, train: bool, device: torch.device, *, workers: int = 0,
                seed: int = 0, bad_images: str = "skip", rank: int = 0, world_size: int = 1):
    """Batches of (uint8 images, int64 targets): from memory when decoded, else from files."""
    if split.images is not None:
        return MemoryLoader(to_tensor(split.images, device), torch.from_numpy(split.targets).to(device),
                            batch_size, train, seed=seed, rank=rank, world_size=world_size)
    sampler = None
    if world_size > 1 and train:
        # Same seeded permutation on every rank, a disjoint slice each; set_epoch reshuffles. drop_last: all
        # ranks make the same number of steps (DDP needs that).
        sampler = torch.utils.data.distributed.DistributedSampler(
            range(len(split)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    elif world_size > 1:
        # Evaluation: every rank-th sample, no padding (DistributedSampler would repeat samples to even out
        # the ranks, and the repeats would be counted twice in the summed metrics).
        sampler = range(rank, len(split), world_size)
    return file_loader(split, spec.channels, spec.img_size, batch_size, train, workers, seed, bad_images, sampler)
