"""Exclusive locks held by a live process: one decoded-image cache entry built at a time, one training per run folder.

A lock is `flock` on a file, holding the holder's PID as text. The kernel drops an flock when its process ends,
however it ends (SIGKILL and power loss included), so a lock left by a killed process is never in the way: the next
taker gets it at once, and a file left behind only names a PID that is gone. The file is removed on release; a
taker that opened it just before is told by the inode check and opens the new one, so two processes can never
both hold "the" lock on two generations of one file.

Where `fcntl` is missing (Windows) there is no lock: `acquire` always succeeds.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


class Locked(Exception):
    """The lock is held by another live process; `pid` is its PID (None when it could not be read)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path} is locked by process {pid if pid is not None else '(unknown)'}")
        self.path, self.pid = path, pid


class FileLock:
    """`with FileLock(path):` waits for the lock; `FileLock(path).acquire(blocking=False)` raises Locked instead."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._owner = 0  # the PID that took it: a forked child (DataLoader worker) never removes the file

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> int | None:
        """The PID written in the lock file (None if there is none, or it cannot be read)."""
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def acquire(self, blocking: bool = True, grace_s: float = 5.0) -> "FileLock":
        """Take the lock. Not blocking: Locked when another live process holds it. A holder whose recorded PID has
        ended is given `grace_s` seconds (its forked helpers, e.g. DataLoader workers, still hold the lock until
        they notice and exit)."""
        if self._fd is not None or fcntl is None:
            return self
        deadline = time.monotonic() + grace_s
        while True:
            # O_CLOEXEC: a program this process starts (TensorBoard, torchrun) never holds the lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                pid = self._holder_now()
                if pid is not None and not pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise Locked(self.path, pid) from None
            except BaseException:
                os.close(fd)
                raise
            if self._same_file(fd):
                break
            os.close(fd)  # released (and removed) by the previous holder while this one waited: take the new file
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd, self._owner = fd, os.getpid()
        return self

    def _holder_now(self) -> int | None:
        """The holder's PID; it writes it right after taking the lock, so an empty file is read again briefly."""
        for _ in range(10):
            pid = self.holder()
            if pid is not None:
                return pid
            time.sleep(0.02)
        return None

    def _same_file(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self._owner == os.getpid() and self._same_file(self._fd):
                self.path.unlink(missing_ok=True)  # before unlocking: a waiter then finds the file gone
        except OSError:
            pass  # a folder made read-only meanwhile: the file stays, the lock still ends with the close
        os.close(self._fd)  # drops the flock
        self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire(blocking=True)

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
