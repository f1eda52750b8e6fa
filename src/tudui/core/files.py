"""Files that are never half-written: one atomic writer for checkpoints, exports, pictures, CSVs and YAML.

Every file tudui writes goes through `atomic_path`: the content is written to a temp file in the destination's
folder, flushed to disk, then renamed over the destination. A crash, a kill or a full disk at any moment leaves
either the previous file or the new one, never a mixture; a write that fails leaves no temp file behind.
"""
from __future__ import annotations

import contextlib
import errno
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from . import __version__
from .errors import TuduiError


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def disk_full_error(path: Path, e: OSError) -> TuduiError:
    """A one-line error for ENOSPC/EDQUOT naming the file and the free space left."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return TuduiError(f"cannot write {path}: no space left on the device ({free}); the previous {path.name} is "
                      "intact. Free some space (or write elsewhere) and run the command again")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside `path`; on a clean exit it is fsync'ed and renamed onto `path`.

    Writers that want a file name (torch.save, onnx.save, savefig) write to the yielded path. On any exception
    the temp file is removed and `path` is untouched; a full disk becomes a TuduiError naming the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; what tudui writes is shared like any other file
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            raise disk_full_error(path, e) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def stale_temp_files(folder: Path) -> list[Path]:
    """Temp files `atomic_path` left in `folder` when its process was killed mid-write."""
    return [p for p in folder.glob(".*.tmp") if p.is_file()]


def make_run_dir(project: str | Path, name: str | None, exist_ok: bool) -> Path:
    """runs/exp, runs/exp2, ...; an existing name gets the next free number rather than being overwritten.

    `mkdir` without exist_ok is atomic, so two runs started at the same moment with the same name get two
    different directories: the loser of the race sees FileExistsError and takes the next number.
    """
    base = Path(project) / (name or "exp")
    base.parent.mkdir(parents=True, exist_ok=True)
    if exist_ok:
        base.mkdir(exist_ok=True)
        return base
    for i in range(1, 10_000):
        cand = base if i == 1 else base.with_name(f"{base.name}{i}")
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            continue
    raise TuduiError(f"too many runs named {base}; pass --name")


def versions() -> dict[str, str]:
    """tudui/torch/torchvision/python versions, written into every run and export."""
    import torch
    import torchvision

    return {"tudui": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}
