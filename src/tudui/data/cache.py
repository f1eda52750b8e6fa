"""Decode once: image folders decoded into uint8 files on disk, memory-mapped by every later run.

A photo folder costs milliseconds per JPEG to decode and seconds per epoch to decode again; the decoded pixels at
the training resolution are a few hundred KB per image and never change while the file does not. So each split of
a folder is decoded once into an *entry* of the cache:

    $TUDUI_CACHE (default ~/.cache/tudui/decoded)/<layout>/<key>.u8     (N, S, S, C) uint8 rows, C order, no header
    $TUDUI_CACHE (default ~/.cache/tudui/decoded)/<layout>/<key>.json   the records (path, bytes, mtime) -> row

`layout` names what a row holds (channels, side, squash or centre crop: `Layout.tag`) and `key` is a hash of the
layout and of every file's absolute path, size and modification time, in the split's order. A second run, `tudui
eval`, or another model on the same folder at the same size finds the entry by its key and maps it: no decoding.

Changes invalidate only what they must: an entry whose key no longer matches is rebuilt by copying the rows of every
file that is unchanged (same path, size and mtime) from the entries already there, so only new or changed files are
decoded; an entry that records a file which now has another size or mtime can never be hit again and is deleted.

Entries are written with `core.files.atomic_path` (temp file, fsync, rename), the rows first and the JSON last, and
a reader needs both with matching sizes: a run killed while writing leaves a temp file (removed by the next build
once its process is gone), never an entry that looks whole. Two processes building the same entry (torchrun ranks)
take turns on a lock file; the second finds the first's entry.

Resident memory: a run whose decoded data is over `--memory-limit-mb` keeps it mapped but reads one batch at a time
from the file (`read_rows`, by `MappedLoader` in data/loaders.py): the mapping is not touched, since a kernel with
large folios maps up to 2 MB of page cache around every row touched, so a folder larger than RAM trains with the
resident set of a batch. Whatever did touch the mapping drops its pages from the process with `release` (the kernel
keeps them in its page cache).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.console import Progress
from ..core.errors import TuduiError
from ..core.files import atomic_path
from ..core.lock import FileLock, pid_alive as _pid_alive
from .images import BadImage
from .loaders import warn_dropped
from .spec import Layout
from .split import Split

# Bumped whenever decode_image would give other pixels for the same file (entries of another format are never hit).
CACHE_FORMAT = 2
CHUNK = 64  # images decoded per thread-pool round: bounds the decoded rows waiting to be written


def cache_root() -> Path:
    """$TUDUI_CACHE, else ~/.cache/tudui/decoded."""
    env = os.environ.get("TUDUI_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tudui" / "decoded"


class MappedArray(np.ndarray):
    """A uint8 array over a memory-mapped cache file (never written to); `release()` drops its pages from this
    process; `read_rows` copies rows out of the file without touching the mapping."""

    def __array_finalize__(self, obj) -> None:
        self.mapping = getattr(obj, "mapping", None)
        self.file = None  # set by map_rows on the whole entry only: a slice or a copy indexes itself

    def release(self) -> None:
        """Unmap the pages read so far from this process's resident set (they stay in the kernel's page cache, so
        reading them again costs no disk access while memory allows). A no-op where madvise is missing."""
        mapping = getattr(self, "mapping", None)
        if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED)

    def read_rows(self, index: np.ndarray) -> np.ndarray:
        """Rows `index` (ascending: runs of consecutive rows are one read each) as a new (len, S, S, C) array.

        The whole entry reads them from its file (pread), so this process holds the rows it asked for and nothing
        more. Touching the mapping instead makes whole page-cache folios resident: a kernel with large folios (ext4,
        XFS, tmpfs on Linux 6.x) maps up to 2 MB around each row touched, so one batch of scattered 16 KB rows
        mapped ~1 MB per row. Other arrays, and systems without pread, index themselves."""
        index = np.asarray(index, dtype=np.int64)
        file = getattr(self, "file", None)
        if file is None or not hasattr(os, "pread"):
            return np.array(self[index], dtype=np.uint8)
        out = np.empty((len(index), *self.shape[1:]), np.uint8)
        flat = out.reshape(len(index), -1)  # (len, row bytes), C order: the file's own
        row_bytes = flat.shape[1]
        breaks = (np.flatnonzero(np.diff(index) != 1) + 1).tolist()
        for lo, hi in zip([0, *breaks], [*breaks, len(index)]):
            _read_exactly(file, memoryview(flat[lo:hi]).cast("B"), int(index[lo]) * row_bytes)
        return out


def _read_exactly(file, buf: memoryview, offset: int) -> None:
    """Fill `buf` from `file` at `offset` (a positional read: the file's offset is shared by no one)."""
    while len(buf):
        if hasattr(os, "preadv"):
            n = os.preadv(file.fileno(), [buf], offset)
        else:
            got = os.pread(file.fileno(), len(buf), offset)
            n = len(got)
            buf[:n] = got
        if n == 0:
            raise TuduiError(f"the decoded-image cache entry {file.name} is shorter than its rows (truncated?); "
                             "delete it and run again")
        buf, offset = buf[n:], offset + n


def map_rows(path: Path, n: int, layout: Layout) -> MappedArray:
    """The (n, S, S, C) uint8 rows of a cache file, memory-mapped read-only (and the file kept open for
    `read_rows`: an entry replaced or deleted meanwhile is still the one read)."""
    if n == 0:
        return np.zeros((0, *layout.row_shape), np.uint8).view(MappedArray)
    file = open(path, "rb", buffering=0)  # noqa: SIM115 - open as long as the array (closed with it)
    # ACCESS_COPY: private pages, so the array is writable for torch.from_numpy; nothing is ever written to it,
    # so the pages stay the file's own, shared with the page cache and every other process mapping the entry
    mapping = mmap.mmap(file.fileno(), n * layout.row_bytes, access=mmap.ACCESS_COPY)
    arr = np.frombuffer(mapping, dtype=np.uint8).reshape(n, *layout.row_shape).view(MappedArray)
    arr.mapping, arr.file = mapping, file
    weakref.finalize(arr, file.close)  # views keep the mapping, never the file
    return arr


def file_records(paths: list[str]) -> list[tuple[str, int, int]]:
    """(absolute path, size in bytes, mtime in ns) per file; (path, -1, -1) for one that cannot be stat'ed."""
    out = []
    for p in paths:
        ap = os.path.abspath(p)
        try:
            st = os.stat(ap)
            out.append((ap, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((ap, -1, -1))
    return out


# Paths are text as the file system gives them: a name that is not UTF-8 (Latin-1 b'caf\xe9') arrives from
# os.listdir as a str holding surrogates ('caf\udce9'); surrogateescape turns them back into the file's own bytes
# (os.fsencode), both when hashing the key and in the entry's JSON, and leaves every UTF-8 path as it was.
PATH_ERRORS = "surrogateescape"


def entry_key(layout: Layout, records: list[tuple[str, int, int]]) -> str:
    text = json.dumps([CACHE_FORMAT, layout.tag, records], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", PATH_ERRORS)).hexdigest()[:32]


@dataclass
class CacheResult:
    split: Split  # images: a MappedArray of the kept rows (unreadable files dropped, listed in `dropped`)
    hit: bool
    decoded: int  # files decoded now
    reused: int  # rows copied from older entries
    path: Path  # the entry's .u8 file

    def describe(self) -> str:
        if self.hit:
            return "cache hit"
        return f"cache built: {self.decoded:,} decoded" + (f", {self.reused:,} reused" if self.reused else "")


def _read_meta(json_path: Path) -> dict | None:
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8", errors=PATH_ERRORS))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT else None


def _complete(meta: dict, data: Path, layout: Layout) -> bool:
    """Whether the rows file exists with exactly the size its JSON promises (the JSON is written last)."""
    try:
        return data.stat().st_size == int(meta["rows"]) * layout.row_bytes
    except (OSError, KeyError, ValueError):
        return False


def _remove_leftovers(folder: Path) -> None:
    """Temp files of writers that are gone (killed mid-write), and rows files whose JSON never came."""
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        parts = tmp.name.split(".")  # .<name>.<random>.<pid>.tmp
        pid = int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None
        try:
            old = now - tmp.stat().st_mtime > 86400
        except OSError:
            continue
        if (pid is not None and not _pid_alive(pid)) or (pid is None and old):
            tmp.unlink(missing_ok=True)
    for data in folder.glob("*.u8"):
        try:
            if not data.with_suffix(".json").exists() and now - data.stat().st_mtime > 3600:
                data.unlink(missing_ok=True)
        except OSError:
            continue


def _remove_entry(json_path: Path) -> None:
    json_path.unlink(missing_ok=True)  # first: a half-removed entry is never taken for a whole one
    json_path.with_suffix(".u8").unlink(missing_ok=True)


def _reusable_rows(folder: Path, layout: Layout, wanted: set[tuple[str, int, int]], current: dict[str, tuple[int, int]]
                   ) -> tuple[dict[tuple[str, int, int], tuple[Path, int]], list[Path]]:
    """({(path, size, mtime): (rows file, row)} for every wanted file an existing entry holds unchanged, [the JSON
    of every entry that records a file which now has another size or mtime: stale for good]).

    A stale entry's unchanged rows are still copied; the caller deletes it once the new entry is in place.
    """
    found: dict[tuple[str, int, int], tuple[Path, int]] = {}
    stale = []
    for json_path in sorted(folder.glob("*.json")):
        meta = _read_meta(json_path)
        data = json_path.with_suffix(".u8")
        if meta is None or not _complete(meta, data, layout):
            continue
        for path, size, mtime, row in meta["records"]:
            now = current.get(path)
            if now is not None and now != (size, mtime) and now != (-1, -1):
                stale.append(json_path)
            if row >= 0 and (path, size, mtime) in wanted:
                found.setdefault((path, size, mtime), (data, row))
    return found, sorted(set(stale))


def _decode_one(layout: Layout, path: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return layout.decode(path), None
    except BadImage as e:
        return None, e.reason


def _build(split: Split, layout: Layout, records: list, folder: Path, key: str) -> tuple[list, int, int]:
    """Write the entry `key`: rows of unchanged files copied from older entries, the rest decoded. Returns
    (records with their row or -1 for unreadable files, rows decoded, rows reused)."""
    current = {}
    for path, size, mtime in file_records([r[0] for r in records]):  # every path, as it is now
        current[path] = (size, mtime)
    reuse, stale = _reusable_rows(folder, layout, set(map(tuple, records)), current)
    sources: dict[Path, MappedArray] = {}
    out_records, decoded, reused, row = [], 0, 0, 0
    progress = Progress(len(records), f"decoding {split.origin or 'images'} into the cache")
    threads = max(1, min(8, os.cpu_count() or 1))  # Pillow decodes without holding the GIL
    data_path = folder / f"{key}.u8"
    suffix = f".{os.getpid()}.tmp"  # the writer's pid: a later build removes the temp file once it is gone
    with atomic_path(data_path, suffix=suffix) as tmp, open(tmp, "wb") as out, \
            ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(records), CHUNK):
            chunk = records[start:start + CHUNK]
            todo = [i for i, rec in enumerate(chunk) if tuple(rec) not in reuse]
            # A few slices per thread, not one future per file: small PNGs decode in ~25 us, about a future's cost.
            step = max(1, -(-len(todo) // (threads * 4)))
            slices = [todo[j:j + step] for j in range(0, len(todo), step)]
            decoded_slices = pool.map(lambda sl: [_decode_one(layout, chunk[i][0]) for i in sl], slices)
            results = dict(zip(todo, (r for sl in decoded_slices for r in sl)))
            for i, rec in enumerate(chunk):
                if i in results:
                    arr, why = results[i]
                    decoded += 1
                else:
                    src, src_row = reuse[tuple(rec)]
                    if src not in sources:
                        meta = _read_meta(src.with_suffix(".json"))
                        sources[src] = map_rows(src, int(meta["rows"]), layout)
                    arr, why = sources[src].read_rows([src_row])[0], None
                    reused += 1
                if arr is None:
                    out_records.append([*rec, -1, why])
                    continue
                out.write(np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
                out_records.append([*rec, row])
                row += 1
            progress.update(len(chunk))
            for arr in sources.values():  # bounded resident memory while copying from a large entry
                arr.release()
        out.flush()
    progress.close()
    meta = {"format": CACHE_FORMAT, "layout": layout.tag, "rows": row, "origin": str(split.origin),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "records": [r[:4] for r in out_records], "unreadable": {r[0]: r[4] for r in out_records if r[3] < 0}}
    with atomic_path(folder / f"{key}.json", suffix=suffix) as tmp:
        tmp.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8", errors=PATH_ERRORS)
    for json_path in stale:  # superseded: they record files that have changed since
        if json_path != folder / f"{key}.json":
            _remove_entry(json_path)
    return out_records, decoded, reused


def cached_split(split: Split, layout: Layout, bad_images: str = "skip", root: Path | None = None) -> CacheResult:
    """`split` (files) with `images` memory-mapped from its cache entry, decoding only what the cache lacks.

    Unreadable files are dropped with one warning listing them (bad_images='skip') or reported all at once
    (bad_images='error'), on a hit as on a build.
    """
    if split.paths is None or not all(isinstance(p, (str, os.PathLike)) for p in split.paths):
        raise TuduiError("the disk cache holds image files only; use --cache ram for your own Dataset")
    folder = (root or cache_root()) / layout.tag
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TuduiError(f"cannot create the decoded-image cache {folder} ({e.strerror}); set $TUDUI_CACHE to a "
                         "writable folder, or train with --cache ram") from None
    records = [list(r) for r in file_records(list(map(str, split.paths)))]
    key = entry_key(layout, [tuple(r) for r in records])
    json_path, data_path = folder / f"{key}.json", folder / f"{key}.u8"
    hit, decoded, reused = True, 0, 0
    meta = _read_meta(json_path)
    if meta is None or not _complete(meta, data_path, layout):
        with FileLock(folder / f"{key}.lock"):  # removed again on release
            meta = _read_meta(json_path)  # another process may have built it while this one waited
            if meta is None or not _complete(meta, data_path, layout):
                _remove_leftovers(folder)
                try:
                    _, decoded, reused = _build(split, layout, records, folder, key)
                except OSError as e:
                    raise TuduiError(f"cannot write the decoded-image cache in {folder} ({e}); free some space, set "
                                     "$TUDUI_CACHE to another folder, or train with --cache ram") from None
                meta, hit = _read_meta(json_path), False
    with contextlib.suppress(OSError):
        os.utime(json_path)  # last use, for whoever cleans the cache by age
    rows = [r[3] for r in meta["records"]]
    # the split's own paths (as the data folder was given; the records hold absolute ones), in the same order
    bad = [(given, meta["unreadable"].get(p, "unreadable"))
           for given, (p, _, _, r) in zip(map(str, split.paths), meta["records"]) if r < 0]
    warn_dropped(bad, bad_images, str(split.origin or ""))
    keep = np.array([i for i, r in enumerate(rows) if r >= 0], dtype=np.int64)
    if len(keep) == 0:
        raise TuduiError(f"none of the {len(split)} images in {split.origin} could be read")
    images = map_rows(data_path, int(meta["rows"]), layout)
    out = Split(split.classes, split.targets[keep], images=images, origin=split.origin,
                dropped=split.dropped + [p for p, _ in bad])
    return CacheResult(out, hit, decoded, reused, data_path)

