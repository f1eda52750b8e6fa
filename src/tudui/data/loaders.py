"""Batches of uint8 images, from memory (fast path) or from files (large datasets); `make_loader` picks one.

Every loader yields `(x, y)` with x a (B, C, H, W) uint8 tensor and y (B,) int64;
augmentation and normalisation happen afterwards, a whole batch at a time on the
training device (transforms.py, spec.py). Small datasets are decoded once and held as one
uint8 tensor on that device, so an epoch costs no decoding and no host copies.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from ..core.errors import TuduiError
from .images import BadImage, decode_image, shown
from .sampler import BalancedSampler, epoch_order, rank_share, sample_weights
from .spec import DataSpec, Layout, eval_layout
from .split import Split


def in_data(path: str, origin: str) -> str:
    """`path` as a message about the data `origin` (the folder or CSV file given as --data) shows it: relative to that
    folder when it lies under it, else as given; printable either way (images.shown)."""
    base = None
    if origin and os.path.isdir(origin):
        base = origin
    elif origin and os.path.isfile(origin):  # a CSV file: its folder
        base = os.path.dirname(origin) or "."
    if base is not None:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return shown(rel)
    return shown(path)


def warn_dropped(bad: list[tuple[str, str]], policy: str, origin: str = "") -> None:
    """One warning (policy 'skip') or one error ('error') listing unreadable images, relative to the data `origin`."""
    if not bad:
        return
    where = f" in {shown(origin)}" if origin and os.path.exists(origin) else ""
    listing = "; ".join(f"{in_data(p, origin)} ({why})" for p, why in bad[:5]) + \
        (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    if policy == "error":
        raise TuduiError(f"{len(bad)} unreadable image(s){where}: {listing}. Remove them, or train with "
                         "--bad-images skip")
    print(f"warning: skipped {len(bad)} unreadable image(s){where}: {listing}", file=sys.stderr)


def decode_split(split: Split, channels: int, size: int, bad_images: str = "skip",
                 crop_pct: float | None = None) -> Split:
    """Return `split` with `images` as (N, size, size, channels) uint8, decoding files or converting arrays
    (squashed to the square, or with `crop_pct` short side resized and centre-cropped: images.decode_image).

    Unreadable files are dropped (bad_images='skip', one warning listing them) or
    reported all at once (bad_images='error').
    """
    if split.images is not None:
        n, h, w, c = split.images.shape
        if (h, w, c) == (size, size, channels):
            return split
        # Same code path as files: PIL resize and mode conversion, so predict-time PNGs match.
        conv = np.stack([decode_image(Image.fromarray(im[..., 0] if c == 1 else im), channels, size, crop_pct)
                         for im in split.images])
        return Split(split.classes, split.targets, images=conv, origin=split.origin)

    def one(path: str):
        try:
            return decode_image(path, channels, size, crop_pct), None
        except BadImage as e:
            return None, e.reason

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
        results = list(pool.map(one, split.paths, chunksize=64))
    bad = [(p, why) for p, (_, why) in zip(split.paths, results) if why is not None]
    warn_dropped(bad, bad_images, str(split.origin or ""))
    keep = np.array([i for i, (arr, _) in enumerate(results) if arr is not None], dtype=np.int64)
    if len(keep) == 0:
        raise TuduiError(f"none of the {len(split)} images in {split.origin} could be read")
    images = np.stack([results[i][0] for i in keep])
    return Split(split.classes, split.targets[keep], images=images, origin=split.origin,
                 dropped=split.dropped + [p for p, _ in bad])


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, C) uint8 numpy -> (N, C, H, W) uint8 tensor on `device`.

    Arrays are copied into a contiguous tensor. Memory-mapped cache rows (data/cache.py) on the CPU are not copied:
    the tensor is a channels-last view of the mapping, so a run starts without reading its data, and the kernel's
    page cache holds the pages once read (the decision to hold them was made against --memory-limit-mb).
    """
    if hasattr(images, "release") and torch.device(device).type == "cpu" and images.flags.writeable:
        return torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, C, H, W) view, strides of NHWC
    out = torch.from_numpy(np.array(np.asarray(images).transpose(0, 3, 1, 2), order="C")).to(device)  # a copy
    release = getattr(images, "release", None)
    if release is not None:  # the copy is what the run uses: the mapped pages need not stay in this process
        release()
    return out


class MemoryLoader:
    """Shuffled batches from a uint8 tensor held on the training device.

    Under torchrun each rank takes every `world_size`-th index of the same
    permutation, so ranks see disjoint shards. Training drops the ragged end so all
    ranks make the same number of steps; evaluation keeps every sample exactly once.
    With `weights` (--balance sampler: data/sampler.py) training draws the epoch's images in proportion to them
    instead of shuffling, sharded the same way.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, train: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1, weights: torch.Tensor | None = None) -> None:
        self.images, self.targets = images, targets  # (N, C, H, W) uint8, (N,) int64, same device
        self.batch_size, self.train = batch_size, train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.weights = weights  # (N,) float64 on the CPU, or None: a permutation
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.targets)
        if self.train:
            order = epoch_order(n, self.seed, self.epoch, self.weights)
            return rank_share(order, self.rank, self.world_size)
        return torch.arange(n)[self.rank::self.world_size]  # empty on a rank past the end (arange would raise)

    def __len__(self) -> int:  # counted, not drawn: callers ask every step (a permutation of 60,000 costs 0.3 ms)
        total = len(self.targets)
        n = total // self.world_size if self.train else len(range(self.rank, total, self.world_size))
        return n // self.batch_size if self.train and n >= self.batch_size else -(-n // self.batch_size)

    def __iter__(self):
        idx = self._indices().to(self.images.device)
        n = len(idx)
        stop = n - n % self.batch_size if self.train and n >= self.batch_size else n
        for start in range(0, stop, self.batch_size):
            b = idx[start:start + self.batch_size]
            yield self.images[b], self.targets[b]


class MappedLoader(MemoryLoader):
    """Shuffled batches copied from memory-mapped cache rows (data/cache.py) that are too large to hold in memory.

    The same batches as MemoryLoader (same shuffle, shards and ragged ends); each batch's rows are read from the
    cache file (`MappedArray.read_rows`, not through the mapping, which would keep whole page-cache folios around
    each row resident) and moved to the device, so the resident set stays at about a batch whatever the size of the
    data. The next batch is read on a thread while the current one trains (reading waits on the disk, not on
    Python).
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, batch_size: int, train: bool, device: torch.device,
                 seed: int = 0, rank: int = 0, world_size: int = 1, weights: torch.Tensor | None = None) -> None:
        super().__init__(images, torch.from_numpy(np.asarray(targets)), batch_size, train, seed, rank, world_size,
                         weights)
        self.device = device  # images stay (N, H, W, C) uint8 on the host

    def _gather(self, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.sort(b)  # sorted: sequential reads
        read = getattr(self.images, "read_rows", None)  # a cache entry: read from its file, the mapping untouched
        x = torch.from_numpy(np.ascontiguousarray(read(rows) if read is not None else self.images[rows]))
        order = np.argsort(np.argsort(b))  # back to the shuffled order
        x = x[torch.from_numpy(order)].permute(0, 3, 1, 2).contiguous()  # (B, C, H, W) uint8
        release = getattr(self.images, "release", None)
        if release is not None:
            release()
        return x, self.targets[torch.from_numpy(b)]

    def __iter__(self):
        idx = self._indices().numpy()
        n = len(idx)
        stop = n - n % self.batch_size if self.train and n >= self.batch_size else n
        starts = list(range(0, stop, self.batch_size))
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(self._gather, idx[0:self.batch_size]) if starts else None
            for k, start in enumerate(starts):
                x, y = ahead.result()
                if k + 1 < len(starts):
                    nxt = starts[k + 1]
                    ahead = pool.submit(self._gather, idx[nxt:nxt + self.batch_size])
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class FileDataset(torch.utils.data.Dataset):
    """Images decoded from files on demand (datasets too large for memory).

    A file may be deleted, truncated or replaced while a run reads it (a night's run on a folder someone is
    tidying). Such a file must not end the run: the next readable image (with its own label) takes its place,
    and the sample carries what went wrong back to the main process, which reports each file once (FileLoader);
    this runs in DataLoader workers, where a warning printed per worker would repeat.
    """

    def __init__(self, split: Split, channels: int, size: int, crop_pct: float | None = None) -> None:
        self.paths, self.targets = split.paths, split.targets
        self.channels, self.size, self.crop_pct = channels, size, crop_pct

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        """((C, H, W) uint8, target, ((path, why), ...) for each file that failed on the way to it)."""
        bad = []
        for attempt in range(len(self.paths)):
            j = (i + attempt) % len(self.paths)
            try:
                arr = decode_image(self.paths[j], self.channels, self.size, self.crop_pct)
                y = torch.from_numpy(self.targets[j]) if self.targets.ndim == 2 else int(self.targets[j])
                return torch.from_numpy(arr).permute(2, 0, 1), y, tuple(bad)
            except BadImage as e:
                bad.append((self.paths[j], e.reason))
        # Nothing readable is left: an empty image the main process never uses (it stops with an error).
        y = torch.zeros(self.targets.shape[1]) if self.targets.ndim == 2 else -1
        return torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8), y, (*bad, (None, "none left"))


def _collate(samples: list) -> tuple[torch.Tensor, torch.Tensor, list]:
    """FileDataset samples -> (B, C, H, W) uint8, (B,) int64, [(path, why), ...] (module level: workers pickle it)."""
    ys = [s[1] for s in samples]  # class indices, or (K,) multi-hot rows
    return (torch.stack([s[0] for s in samples]),
            torch.stack(ys) if isinstance(ys[0], torch.Tensor) else torch.tensor(ys, dtype=torch.int64),
            [b for s in samples for b in s[2]])


class FileLoader(torch.utils.data.DataLoader):
    """A DataLoader of FileDataset that yields (x, y) and reports files that became unreadable, each once.

    The first LISTED files are named one per line as they are met; after that, each pass ends with one line
    counting the further ones, so a vanished folder of 100,000 images does not flood the log.
    """

    LISTED = 10

    def __init__(self, dataset: FileDataset, bad_images: str = "skip", origin: str = "", **kwargs) -> None:
        super().__init__(dataset, collate_fn=_collate, **kwargs)
        self.bad_images, self.origin = bad_images, origin
        self.unreadable: dict[str, str] = {}  # path -> why, every file found unreadable during the run

    def _report(self, bad: list[tuple[str | None, str]]) -> int:
        """Record `bad`; returns how many new files were not named (over LISTED)."""
        unlisted = 0
        for path, why in bad:
            if path is None:
                raise TuduiError(f"none of the {len(self.dataset)} images of {self.origin or 'the dataset'} can be "
                                 "read any more (deleted or replaced during the run?)")
            if path in self.unreadable:
                continue
            if self.bad_images == "error":
                raise TuduiError(f"cannot read image {path}: {why} (it changed during the run). Restore it, "
                                 "or train with --bad-images skip")
            self.unreadable[path] = why
            if len(self.unreadable) > self.LISTED:
                unlisted += 1
                continue
            more = " (further ones will be counted, not listed)" if len(self.unreadable) == self.LISTED else ""
            where = f" in {shown(self.origin)}" if self.origin and os.path.exists(self.origin) else ""
            print(f"warning: image {in_data(path, self.origin)}{where} became unreadable during the run ({why}); the "
                  f"next readable image takes its place{more}", file=sys.stderr, flush=True)
        return unlisted

    def __iter__(self):
        unlisted = 0
        for x, y, bad in super().__iter__():
            if bad:
                unlisted += self._report(bad)
            yield x, y
        if unlisted:
            print(f"warning: {unlisted} more image(s) of {self.origin or 'the data'} became unreadable during this "
                  f"pass ({len(self.unreadable)} in all); the next readable images took their places",
                  file=sys.stderr, flush=True)


def file_loader(split: Split, channels: int, size: int, batch_size: int, train: bool, workers: int,
                seed: int = 0, bad_images: str = "skip", sampler=None, crop_pct: float | None = None,
                reused: bool = False) -> FileLoader:
    """`reused`: the loader is iterated once per epoch, so its worker processes stay up between passes (until
    stop_workers); a loader read once lets its workers go as soon as the pass ends."""
    ds = FileDataset(split, channels, size, crop_pct)
    g = torch.Generator().manual_seed(seed)
    # Training drops the ragged end unless this rank's share is less than one batch: then that share is the one
    # batch (as MemoryLoader does), not nothing (a rank's share, not the whole set: 100 images on 2 ranks at batch
    # 64 are one batch of 50 each)
    share = len(sampler) if sampler is not None else len(ds)
    return FileLoader(
        ds, bad_images, str(split.origin or ""), batch_size=batch_size, shuffle=train and sampler is None,
        sampler=sampler, drop_last=train and share >= batch_size, num_workers=workers, generator=g,
        persistent_workers=workers > 0 and reused, pin_memory=torch.cuda.is_available())


def stop_workers(loader) -> None:
    """End the worker processes a reused FileLoader keeps between passes, now. Left to the garbage collector (a
    finished run's objects refer to each other, so only a collection frees them), their shutdown took torch's 5 s
    join timeout per worker, at whatever later moment the collection came (20 s for 4 workers, measured in a
    notebook-style session: tudui.train, then gc.collect()). Other loaders: nothing to do."""
    iterator = getattr(loader, "_iterator", None)  # DataLoader's persistent iterator (torch keeps it there)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


def make_loader(split: Split, spec: DataSpec, batch_size: int, train: bool, device: torch.device, *,
                workers: int = 0, seed: int = 0, bad_images: str = "skip", rank: int = 0, world_size: int = 1,
                layout: Layout | None = None, in_memory: bool = True, sampler_weights: str | None = None,
                reused: bool = False):
    """Batches of (uint8 images, int64 targets): from memory when decoded and held (in_memory), memory-mapped
    cache rows batch by batch when they are not, else decoded from files (in `layout`: default the spec's
    evaluation layout). `sampler_weights` ('inverse' or 'sqrt', training only): each epoch's images drawn by
    data/sampler.py's balanced sampler instead of shuffled. `reused`: read once per epoch (file_loader)."""
    weights = sample_weights(split.targets, len(split.classes), sampler_weights) if train and sampler_weights \
        else None
    if split.images is not None and (in_memory or not hasattr(split.images, "release")):
        return MemoryLoader(to_tensor(split.images, device), torch.from_numpy(split.targets).to(device),
                            batch_size, train, seed=seed, rank=rank, world_size=world_size, weights=weights)
    if split.images is not None:
        return MappedLoader(split.images, split.targets, batch_size, train, device, seed=seed, rank=rank,
                            world_size=world_size, weights=weights)
    layout = layout or eval_layout(spec)
    sampler = None
    if weights is not None:  # the same draws as MemoryLoader's, this rank's share
        sampler = BalancedSampler(weights, seed, rank, world_size)
    elif world_size > 1 and train:
        # Same seeded permutation on every rank, a disjoint slice each; set_epoch reshuffles. drop_last: all
        # ranks make the same number of steps (DDP needs that).
        sampler = torch.utils.data.distributed.DistributedSampler(
            range(len(split)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    elif world_size > 1:
        # Evaluation: every rank-th sample, no padding (DistributedSampler would repeat samples to even out
        # the ranks, and the repeats would be counted twice in the summed metrics).
        sampler = range(rank, len(split), world_size)
    return file_loader(split, layout.channels, layout.size, batch_size, train, workers, seed, bad_images, sampler,
                       layout.crop_pct, reused)
