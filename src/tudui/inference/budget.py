"""Admission of the server's decodes: how many run at once, and how many bytes they may hold together.

A small upload can decode to a large image (a 142 KB PNG is 64 megapixels of 16-bit grey, 128 MB decoded), so
counting requests or upload bytes does not bound memory. Each decode declares what it will hold at most
(data/images.decode_cost, read from the header before any pixel is decoded) and waits here until the running
decodes' bytes plus its own fit the budget and a slot is free; decodes are admitted in arrival order, so a large
image is not starved by a stream of small ones.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import os


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on macOS / Windows
        return max(1, os.cpu_count() or 1)


class DecodeBudget:
    """At most `slots` decodes at once, holding at most `capacity` bytes together (each declares its own).

    Must be used from one event loop (the server's). `peak_bytes` and `peak_running` are the most seen at once
    (for tests and benchmarks).
    """

    def __init__(self, capacity: int, slots: int) -> None:
        if capacity < 1 or slots < 1:
            raise ValueError(f"capacity and slots must be positive, got {capacity} and {slots}")
        self.capacity = capacity
        self.slots = slots
        self.used = 0  # bytes declared by the decodes running now
        self.running = 0
        self.peak_bytes = 0
        self.peak_running = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()  # (bytes, wake-up)

    def _fits(self, nbytes: int) -> bool:
        return self.running < self.slots and self.used + nbytes <= self.capacity

    def _take(self, nbytes: int) -> None:
        self.used += nbytes
        self.running += 1
        self.peak_bytes = max(self.peak_bytes, self.used)
        self.peak_running = max(self.peak_running, self.running)

    def _admit_waiting(self) -> None:
        """Admit the oldest waiting decodes while they fit (in order: one that does not fit holds the others back)."""
        while self._waiting and self._fits(self._waiting[0][0]):
            nbytes, wake = self._waiting.popleft()
            self._take(nbytes)
            wake.set_result(None)

    def _give_back(self, nbytes: int) -> None:
        self.used -= nbytes
        self.running -= 1
        self._admit_waiting()

    @contextlib.asynccontextmanager
    async def admit(self, nbytes: int):
        """Wait for a slot and `nbytes` of the budget, hold them for the block; nbytes must be <= capacity."""
        if nbytes > self.capacity:
            raise ValueError(f"{nbytes:,} bytes can never fit a budget of {self.capacity:,}")
        if not self._waiting and self._fits(nbytes):
            self._take(nbytes)
        else:
            entry = (nbytes, asyncio.get_running_loop().create_future())
            self._waiting.append(entry)
            try:
                await entry[1]
            except BaseException:  # cancelled while waiting (the client went away, the server stops)
                if entry[1].done() and not entry[1].cancelled():  # admitted just before: hand the share back
                    self._give_back(nbytes)
                else:
                    self._waiting.remove(entry)
                    self._admit_waiting()  # it may have been the one holding the others back
                raise
        try:
            yield
        finally:
            self._give_back(nbytes)
