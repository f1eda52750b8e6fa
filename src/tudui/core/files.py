"""Files that are never half-written: one atomic writer for checkpoints, exports, pictures, CSVs and YAML.

Every file tudui writes goes through `atomic_path`: the content is written to a temp file in the destination's
folder, flushed to disk, then renamed over the destination. A crash, a kill or a full disk at any moment leaves
either the previous file or the new one, never a mixture; a write that fails leaves no temp file behind.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from . import __version__
from .console import shown
from .errors import TuduiError
from .lock import FileLock, Locked, pid_alive


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


NAME_MAX = 255  # bytes in one folder name on Linux, macOS and Windows file systems
RUN_LOCK = ".tudui-run.lock"  # in a run directory while a training writes it (core/lock.py): holds its PID


def check_run_name(name: str) -> str:
    """`name` if it names one folder inside --project; otherwise a one-line error saying why.

    '../x', 'a/b', '.', '..' would put the run elsewhere than --project (or beside it); control characters (newlines,
    terminal escape codes) would forge lines in the logs and drive the terminal.
    """
    if not isinstance(name, str) or name.strip() in ("", ".", "..") or "/" in name or "\\" in name or \
            (os.altsep and os.altsep in name):
        raise TuduiError(f"--name '{shown(name)}' must be a single folder name inside --project (no '/' or '\\', "
                         "not empty, '.' or '..'); choose a name such as exp-lr3e-4")
    if not name.isprintable():
        raise TuduiError(f"--name '{shown(name)}' contains control characters (newlines, terminal escape codes); "
                         "choose a name of printable characters")
    size = len(os.fsencode(name))
    if size > NAME_MAX - 5:  # room for the run number tudui appends to a taken name (exp -> exp-9999)
        raise TuduiError(f"--name is {size} bytes long; a folder name can have at most {NAME_MAX - 5} here "
                         "(the file system allows 255, tudui keeps 5 for the run number). Choose a shorter name")
    return name


def _run_dir_error(path: Path, e: OSError, project: Path) -> TuduiError:
    """A one-line error for an OSError making or locking the run directory `path`."""
    if e.errno == errno.ENAMETOOLONG:
        return TuduiError(f"cannot create {shown(path)}: the name is too long for the file system; choose a shorter "
                          "--name or --project")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = shown(path if path.exists() else project)
        return TuduiError(f"cannot write in {where} ({e.strerror}); make it writable (or pass a writable --project) "
                          "and run the command again")
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return disk_full_error(path / RUN_LOCK, e)
    return TuduiError(f"cannot create the run directory {shown(path)} ({e.strerror or e})")


def _check_project(project: Path) -> None:
    for p in (project, *project.parents):  # the first part of --project that exists must be a folder
        if p.is_dir():
            return
        if p.exists() or p.is_symlink():
            what = "a file" if p.is_file() else ("a link to a missing folder" if p.is_symlink() else "not a folder")
            raise TuduiError(f"--project {shown(project)}: {shown(p)} is {what}; --project names the folder "
                             "holding the run directories")


def open_run_dir(project: str | Path, name: str | None, exist_ok: bool) -> tuple[Path, FileLock, list[Path]]:
    """(run directory, its lock (held), the folders created now, innermost first): runs/exp, runs/exp-2, ...

    An existing name gets the next free number rather than being overwritten, after a '-' (`run1` then `run1-2`,
    never `run12`, which reads as run twelve). `mkdir` without exist_ok is atomic,
    so two runs started at the same moment with the same name get two different directories: the loser of the race
    sees FileExistsError and takes the next number. With exist_ok (and on --resume) the directory may be another
    training's: its lock (held while a training writes, dropped by the kernel when that process dies however it
    dies) refuses a second live writer with the first one's PID.
    """
    project = Path(project)
    name = check_run_name(name if name is not None else "exp")
    base = project / name
    _check_project(project)
    # the project folder and those above it that do not exist yet: a run that fails in set-up leaves none behind
    created = [p for p in (project, *project.parents) if not os.path.lexists(p)]
    try:
        project.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _run_dir_error(project, e, project) from None
    if exist_ok:
        if base.is_symlink() and not base.exists():
            raise TuduiError(f"{shown(base)} is a link to {shown(os.readlink(base))}, which does not exist; remove the "
                             "link or create its target, or choose another --name")
        if base.exists() and not base.is_dir():
            raise TuduiError(f"{shown(base)} exists and is not a folder; choose another --name")
        try:
            base.mkdir()
            created.insert(0, base)
        except FileExistsError:
            pass
        except OSError as e:
            raise _run_dir_error(base, e, project) from None
        run_dir = base
    else:
        for i in range(1, 10_000):
            run_dir = base if i == 1 else base.with_name(f"{base.name}-{i}")  # run1-2, not run12
            try:
                run_dir.mkdir()
                created.insert(0, run_dir)
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise _run_dir_error(run_dir, e, project) from None
        else:
            raise TuduiError(f"too many runs named {shown(base)}; pass --name")
    lock = FileLock(run_dir / RUN_LOCK)
    try:
        lock.acquire(blocking=False)
    except Locked as e:
        _remove_if_empty(created)
        if e.pid is not None and not pid_alive(e.pid):  # its forked helpers (DataLoader workers) still hold it
            raise TuduiError(f"{shown(run_dir)} is still held by processes that training {e.pid} started (it has "
                             "ended); try again in a few seconds, or choose another --name") from None
        who = f"process {e.pid}" if e.pid is not None else "another process"
        raise TuduiError(f"{shown(run_dir)} is in use by another training ({who}, still running); wait for it to "
                         "end, or choose another --name") from None
    except OSError as e:
        _remove_if_empty(created)
        raise _run_dir_error(run_dir, e, project) from None
    return run_dir, lock, created


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove `folders` (innermost first) while each is empty: nothing of anyone's is lost."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def close_run_dir(run_dir: Path, lock: FileLock | None, created: list[Path]) -> None:
    """Release the lock; the folders `open_run_dir` created for a run that failed before writing anything (the run
    directory, and `--project` when it was new) are removed again."""
    if lock is not None:
        lock.release()
    _remove_if_empty(created)


def make_run_dir(project: str | Path, name: str | None, exist_ok: bool) -> Path:
    """The run directory alone, not held (for callers that write it once, at once)."""
    run_dir, lock, _ = open_run_dir(project, name, exist_ok)
    lock.release()
    return run_dir


def versions() -> dict[str, str]:
    """tudui/torch/torchvision/python versions, written into every run and export."""
    import torch

    return {"tudui": __version__, "torch": str(torch.__version__), "torchvision": _torchvision_version(),
            "python": platform.python_version()}


def _torchvision_version() -> str:
    """torchvision.__version__ (with its build tag, e.g. 0.29.1+cu130) without importing torchvision, which costs a
    third of tudui's start-up (models/zoo.py): read from its version.py, or the installed distribution's version."""
    if "torchvision" in sys.modules:
        return str(sys.modules["torchvision"].__version__)
    try:
        text = (Path(importlib.util.find_spec("torchvision").origin).parent / "version.py").read_text()
        return re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", text, re.M).group(1)
    except (AttributeError, TypeError, OSError):  # no spec, no file, another layout
        return importlib.metadata.version("torchvision")
