"""Dynamic micro-batching: the batcher on its own, and the server's batched answers against the Predictor's."""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from tudui.inference.batching import MicroBatcher


class Recorder:
    """A batch function that doubles each item and remembers the batches it was given."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list] = []
        self.fail_on = fail_on

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        if self.fail_on in items:
            raise ValueError(f"cannot do {self.fail_on}")
        return [2 * i for i in items]


def test_concurrent_items_share_batches_and_each_gets_its_own_answer():
    fn = Recorder()

    async def main():
        batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=50)
        answers = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.close()
        return answers, batcher

    answers, batcher = asyncio.run(main())
    assert [a[0] for a in answers] == [2 * i for i in range(20)]  # in order, nothing lost or swapped
    assert sorted(i for b in fn.batches for i in b) == list(range(20))
    assert max(len(b) for b in fn.batches) == 8 and len(fn.batches) == 3  # 8 + 8 + 4: all queued before the first ran
    assert [a[1] for a in answers] == [len(b) for b in fn.batches for _ in b]  # each answer says its batch size
    assert (batcher.batches, batcher.items) == (3, 20)


def run(coro, timeout: float = 30):
    """Run `coro`; a batcher that waited out a 60 s window (or forever) fails here instead of hanging."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def request(batcher: MicroBatcher, item, before=None):
    """What the server does per request: work inside expecting() (decoding there), then submit."""
    with batcher.expecting():
        if before is not None:
            await before()
    return await batcher.submit(item)


def test_a_forming_batch_waits_for_requests_still_being_decoded():
    fn = Recorder()

    async def main():
        batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=60_000)
        got = await asyncio.gather(request(batcher, 0), request(batcher, 1, lambda: asyncio.sleep(0.05)),
                                   request(batcher, 2, lambda: asyncio.sleep(0.1)))
        await batcher.close()
        return got

    got = run(main())
    assert fn.batches == [[0, 1, 2]] and [g[1] for g in got] == [3, 3, 3]  # 0 waited for the two on their way
    # ... and ran as soon as nobody else was coming, not after the 60 s window (run() gives up after 30 s).


def test_a_lone_request_or_a_full_batch_does_not_wait():
    fn = Recorder()

    async def main(n, max_batch):
        batcher = MicroBatcher(fn, max_batch=max_batch, max_wait_ms=60_000)
        got = await asyncio.gather(*(batcher.submit(i) for i in range(n)))
        await batcher.close()
        return got

    assert [g[1] for g in run(main(1, 8))] == [1]  # nobody on the way: no waiting at all
    assert [g[1] for g in run(main(4, 4))] == [4] * 4
    fn.batches.clear()
    assert [g[1] for g in run(main(4, 1))] == [1] * 4 and len(fn.batches) == 4  # --max-batch 1: one at a time


def test_the_wait_for_a_slow_request_ends_with_the_window():
    fn = Recorder()

    async def main():
        batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=50)
        first_answered = asyncio.Event()

        async def first():
            answer = await request(batcher, 0)
            first_answered.set()
            return answer

        # Request 1 is "decoding" until request 0 has its answer: without the 50 ms bound, neither would finish.
        got = await asyncio.gather(first(), request(batcher, 1, first_answered.wait))
        await batcher.close()
        return got

    assert [g[1] for g in run(main())] == [1, 1] and fn.batches == [[0], [1]]


def test_a_request_that_fails_before_submitting_does_not_hold_the_batch():
    fn = Recorder()

    async def main():
        batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=60_000)

        async def broken():
            raise ValueError("not an image")

        got = await asyncio.gather(request(batcher, 0), request(batcher, 1, broken), return_exceptions=True)
        await batcher.close()
        return got

    got = run(main())
    assert got[0][:2] == (0, 1) and isinstance(got[1], ValueError) and fn.batches == [[0]]


def test_an_error_reaches_every_request_of_its_batch_and_the_next_batch_runs():
    fn = Recorder(fail_on=3)

    async def main():
        batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=20)
        first = await asyncio.gather(*(batcher.submit(i) for i in range(5)), return_exceptions=True)
        second = await batcher.submit(10)
        await batcher.close()
        return first, second

    first, second = asyncio.run(main())
    assert all(isinstance(r, ValueError) and "cannot do 3" in str(r) for r in first)
    assert second[0] == 20


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recorder(), 0, 1)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(Recorder(), 4, -1)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8 + seed % 5, 8), dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("max_batch", [1, 16])
def test_server_answers_concurrent_requests_as_the_predictor_does(tiny_model, live_server, max_batch):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from tudui.inference import Predictor
    from tudui.inference.server import create_app

    predictor = Predictor.from_path(tiny_model, device="cpu")
    images = [_png(s) for s in range(24)]
    expected = predictor.predict(images, topk=3)
    app = create_app(predictor, topk=3, max_batch=max_batch, max_wait_ms=50)

    async def send_all(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/predict", content=data) for data in images))

    with live_server(app) as url:
        responses = asyncio.run(send_all(url))
    sizes = []
    for r, want in zip(responses, expected):
        assert r.status_code == 200, r.text
        body = r.json()
        got = [(p["class"], p["probability"]) for p in body["predictions"]]
        assert [c for c, _ in got] == [c for c, _ in want.topk]
        assert np.allclose([p for _, p in got], [p for _, p in want.topk], atol=1e-5)
        sizes.append(body["batch"])
    if max_batch == 1:
        assert set(sizes) == {1}  # one at a time
    else:
        assert max(sizes) > 1 and max(sizes) <= max_batch  # 24 at once with a 50 ms window: batches did form
    # Each answer names the size of its batch: a batch of n answers n requests.
    assert app.state.batcher.items == 24 and app.state.batcher.batches == round(sum(1 / n for n in sizes))
