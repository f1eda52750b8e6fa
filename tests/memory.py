"""Resident memory of the test process, measured with psutil while a call runs (memory-bound tests)."""
from __future__ import annotations

import gc
import threading
import time

import psutil


def peak_rss_growth_mb(fn) -> tuple[object, float]:
    """(what `fn()` returned or raised, the largest growth of this process's resident memory while it ran, MiB).

    A thread samples the RSS every millisecond: allocations big enough to matter here (hundreds of MB) take far
    longer than that to touch, so the peak is not missed.
    """
    gc.collect()
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
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
    return out, (max(peak, proc.memory_info().rss) - base) / 2**20
