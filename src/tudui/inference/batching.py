"""Dynamic micro-batching for the server: requests that arrive together share one forward pass.

Each request decodes its own image (in the thread pool, in parallel) inside
`expecting()`, then `submit`s the pixels here. One worker task takes the oldest
queued request and, while other requests are still being decoded, waits for
them until `max_wait_ms` after that request *arrived* or until `max_batch` are
queued; then it runs the batch on a single worker thread. A lone request (no
other on its way) runs at once, so a single client pays no waiting; while a
batch runs, new requests queue up, so under load batches form by themselves.

A model's forward pass costs far less per image in a batch of 32 than one by one
(one call, one set of kernel launches, better use of the CPU's vector units), and
running one batch at a time keeps the intra-op threads from being oversubscribed
by concurrent requests.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class MicroBatcher:
    """Runs `fn(items) -> results` (same length, same order) on batches of submitted items.

    Must be used from one event loop (the server's): `expecting` and `submit` are
    called on it (not from threads); its worker task starts with the first `submit`
    and stops with `close`.
    """

    def __init__(self, fn: Callable[[list], list], max_batch: int, max_wait_ms: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000  # seconds
        # (item, future, arrival time on the loop's clock in s); a deque plus an Event rather than an asyncio.Queue,
        # so waiting with a timeout can never lose an item that arrives as the timeout fires.
        self._pending: collections.deque[tuple[Any, asyncio.Future, float]] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread: batches run one after another, each with all of torch's intra-op threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tudui-batch")
        self._coming = 0  # requests inside expecting(): they will submit soon
        self.batches = 0  # forward passes run so far
        self.items = 0  # items answered so far (items / batches = mean batch size)

    @contextlib.contextmanager
    def expecting(self):
        """Wrap the work a request does before `submit` (decoding): meanwhile, a forming batch waits for it."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1
            if self._arrived is not None:
                self._arrived.set()  # the worker re-checks: its batch may not need to wait any more

    async def submit(self, item: Any) -> tuple[Any, int, float]:
        """(fn's result for `item`, the size of the batch it ran in, that batch's run time in ms)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            # First use, or a new event loop (a test client may run each session in its own): a worker for it.
            self._pending.clear()  # anything queued on an old, stopped loop can no longer be answered there
            self._loop, self._arrived = loop, asyncio.Event()
            self._task = loop.create_task(self._worker(), name="tudui-micro-batcher")
        future = loop.create_future()
        self._pending.append((item, future, loop.time()))
        self._arrived.set()
        return await future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._pending[0][2] + self.max_wait
            while (len(self._pending) < self.max_batch and self._coming > 0
                   and (left := deadline - loop.time()) > 0):
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            batch = [b for b in batch if not b[1].done()]  # a request cancelled while queued needs no answer
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the worker goes on
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            ms = (time.perf_counter() - t0) * 1000
            self.batches += 1
            self.items += len(batch)
            for (_, future, _), result in zip(batch, results):
                if not future.done():
                    future.set_result((result, len(batch), ms))

    async def close(self) -> None:
        """Stop the worker task and its thread; requests still queued get CancelledError."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, future, _ in self._pending:
            future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=False)
