"""Resident memory of the test process, measured with psutil while a call runs (memory-bound tests)."""
from __future__ import annotations

import gc
import threading
import time

import psutil


def rss_file_bytes() -> int:
    """This process's resident pages that belong to files it maps (RssFile in /proc/self/status: Linux only), not
    its heap: what a memory-mapped dataset adds, free of the allocator's slack."""
    return _status_kb("RssFile") * 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def _reset_peak_rss() -> bool:
    """Reset the kernel's record of this process's peak resident memory (VmHWM) to what is resident now (Linux 4.0
    and later, writing 5 to /proc/self/clear_refs); False where that is not allowed or not Linux."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _outcome(fn):
    """What `fn()` returned, or the exception it raised (the caller checks which)."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the caller checks what was raised
        return e


def peak_rss_growth_mb(fn, measure=None) -> tuple[object, float]:
    """(what `fn()` returned or raised, the largest growth of this process's resident memory while it ran, MiB).

    The resident memory's peak is the kernel's own (VmHWM, reset before `fn` runs): exact, and nothing runs beside
    `fn`. Where it cannot be reset, and for `measure()` (bytes, e.g. rss_file_bytes, which the kernel keeps no peak
    of), a thread samples every millisecond instead: allocations big enough to matter here (hundreds of MB) take far
    longer than that to touch, so the peak is not missed, but the polling costs CPU beside `fn`.
    """
    gc.collect()
    if measure is None and _reset_peak_rss():
        base = _status_kb("VmRSS")
        out = _outcome(fn)
        return out, (_status_kb("VmHWM") - base) / 1024
    proc = psutil.Process()
    rss = measure or (lambda: proc.memory_info().rss)
    base = peak = rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = _outcome(fn)
    finally:
        done.set()
        sampler.join()
    return out, (max(peak, rss()) - base) / 2**20
