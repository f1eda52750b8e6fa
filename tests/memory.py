"""Resident memory of the test process, measured with psutil while a call runs (memory-bound tests)."""
from __future__ import annotations

import gc
import threading
import time

import psutil


def rss_file_bytes() -> int:
    """This process's resident pages that belong to files it maps (RssFile in /proc/self/status: Linux only), not
    its heap: what a memory-mapped dataset adds, free of the allocator's slack."""
    with open("/proc/self/status", encoding="ascii") as f:
        kb = next(line.split()[1] for line in f if line.startswith("RssFile:"))
    return int(kb) * 1024


def peak_rss_growth_mb(fn, measure=None) -> tuple[object, float]:
    """(what `fn()` returned or raised, the largest growth of this process's resident memory while it ran, MiB).

    A thread samples the RSS (or `measure()`, bytes: e.g. rss_file_bytes) every millisecond: allocations big enough
    to matter here (hundreds of MB) take far longer than that to touch, so the peak is not missed.
    """
    gc.collect()
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
        out = fn()
    except Exception as e:  # noqa: BLE001 - the caller checks what was raised
        out = e
    finally:
        done.set()
        sampler.join()
    return out, (max(peak, rss()) - base) / 2**20
