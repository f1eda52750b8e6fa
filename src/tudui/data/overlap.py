"""Validation and test images that are training images: scores measured on them say nothing about new images.

Two ways a split copies training: the same file (a CSV naming one file on many rows, whose held-out validation rows
then name training files; links; hard links) and the same picture in another file (a val/ folder copied from
train/). Files are compared by identity (device and inode, so links and hard links count), pictures by a hash of
the decoded uint8 rows a run holds in memory anyway (data held memory-mapped or decoded from files every epoch is
compared by file only: hashing it would read it all once more).
"""
from __future__ import annotations

import hashlib
import os
import sys

import numpy as np

from ..core.device import world
from .split import Split


def file_identity(path) -> tuple:
    """(device, inode) of the file `path` names, following links; its absolute path where it cannot be stat'ed."""
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except (OSError, TypeError, ValueError):
        return (os.path.abspath(path),) if isinstance(path, (str, bytes, os.PathLike)) else (id(path),)


def same_files(train: Split, other: Split) -> int:
    """How many of `other`'s items are files that `train` lists too (0 unless both are lists of files)."""
    if train.paths is None or other.paths is None or not all(isinstance(p, (str, os.PathLike)) for p in other.paths):
        return 0
    ids = {file_identity(p) for p in set(train.paths) if isinstance(p, (str, os.PathLike))}  # one stat per file
    other_ids = {p: file_identity(p) for p in set(other.paths)}
    return sum(other_ids[p] in ids for p in other.paths)


SAMPLED_BYTES = 256  # bytes of each image in its fingerprint: a first pass that is cheap whatever the image size
CHUNK_ROWS = 65_536  # images fingerprinted at once (bounds the temporary copy to ~16 MB)


def _fingerprints(images: np.ndarray) -> np.ndarray:
    """(N,) uint64: a wrap-around weighted sum of about SAMPLED_BYTES evenly spaced bytes of each image. Equal images
    have equal fingerprints; unequal ones rarely do, and those few are told apart by _full_hashes."""
    flat = images.reshape(len(images), -1)
    step = max(1, flat.shape[1] // SAMPLED_BYTES)
    width = len(range(0, flat.shape[1], step)) // 8 * 8  # whole uint64 words
    weights = np.random.default_rng(0).integers(1, 2**63, width // 8, dtype=np.uint64) | np.uint64(1)
    out = np.empty(len(images), np.uint64)
    for i in range(0, len(images), CHUNK_ROWS):
        words = np.ascontiguousarray(flat[i:i + CHUNK_ROWS, ::step][:, :width]).view(np.uint64)
        out[i:i + CHUNK_ROWS] = (words * weights).sum(axis=1)  # uint64 arithmetic wraps around, as a hash wants
    return out


def _full_hashes(images: np.ndarray, rows: np.ndarray) -> set[bytes]:
    return {hashlib.blake2b(np.ascontiguousarray(images[i]), digest_size=16).digest() for i in rows}


def same_pixels(train: Split, other: Split) -> int | None:
    """How many of `other`'s decoded images equal a training image pixel for pixel; None when either is not held
    decoded in memory (see the module's docstring). Fingerprints of a sample of each image's bytes find the
    candidates; only those are hashed whole (hashing every image would cost seconds per GB)."""
    if train.images is None or other.images is None or train.images.shape[1:] != other.images.shape[1:]:
        return None
    if len(train.images) == 0 or len(other.images) == 0:
        return 0
    mine, theirs = _fingerprints(train.images), _fingerprints(other.images)
    candidates = np.flatnonzero(np.isin(theirs, mine))
    if len(candidates) == 0:
        return 0
    known = _full_hashes(train.images, np.flatnonzero(np.isin(mine, theirs[candidates])))
    return sum(hashlib.blake2b(np.ascontiguousarray(other.images[j]), digest_size=16).digest() in known
               for j in candidates)


def overlap_message(name: str, total: int, by_file: int, by_pixels: int | None, data: str) -> str | None:
    """The warning for `name` (val or test) of `total` images, `by_file` of them training files and `by_pixels` equal
    to a training image (None: not compared), or None when none is."""
    n = min(total, max(by_file, by_pixels or 0))  # files counted before unreadable ones were dropped
    if n == 0 or total == 0:
        return None
    how = [f"{by_file:,} by file" if by_file else "", f"{by_pixels:,} by identical pixels" if by_pixels else ""]
    share = f"{n / total:.0%}" if n / total >= 0.01 else f"{n / total:.2%}"  # 1 of 10,000 is not 0%
    return (f"warning: {n:,} of {total:,} {name} images ({share}) are also training images "
            f"({', '.join(h for h in how if h)}), so the {name} scores overstate how the model does on new images. "
            f"Remove the copies from the {name} data"
            + (" (or the repeated rows from the CSV)" if ".csv" in data.lower() else "")
            + f"; `tudui data check {data}` lists them")


def warn_overlap(train: Split, others: dict[str, Split | None], by_file: dict[str, int], in_memory: bool,
                 data: str) -> list[str]:
    """Print (on the first process only) and return a warning for each of `others` that repeats training images.
    `by_file` holds the same-file counts taken while the splits were lists of files (same_files)."""
    messages = []
    for name, split in others.items():
        if split is None:
            continue
        pixels = same_pixels(train, split) if in_memory else None
        msg = overlap_message(name, len(split), by_file.get(name, 0), pixels, data)
        if msg:
            messages.append(msg)
            if world().rank == 0:
                print(msg, file=sys.stderr, flush=True)
    return messages
