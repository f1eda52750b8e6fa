"""DecodeBudget: decodes admitted in arrival order within a count and a byte budget."""
from __future__ import annotations

import asyncio

import pytest

from tudui.inference.budget import DecodeBudget, cores


def run(coro):
    return asyncio.run(coro)


def test_the_sum_of_bytes_and_the_count_stay_within_the_budget():
    async def main():
        budget = DecodeBudget(capacity=100, slots=3)
        order = []

        async def work(name: str, nbytes: int):
            async with budget.admit(nbytes):
                order.append(name)
                assert budget.used <= 100 and budget.running <= 3
                await asyncio.sleep(0.01)

        await asyncio.gather(*(work(f"w{i}", n) for i, n in enumerate([60, 30, 30, 10, 10, 10, 100, 5])))
        return budget, order

    budget, order = run(main())
    assert budget.peak_bytes <= 100 and budget.peak_running <= 3 and budget.used == budget.running == 0
    assert order == [f"w{i}" for i in range(8)]  # arrival order: a large one is not overtaken by small ones


def test_a_cancelled_waiter_lets_the_next_ones_in():
    async def main():
        budget = DecodeBudget(capacity=10, slots=4)
        release = asyncio.Event()

        async def hold(n):
            async with budget.admit(n):
                await release.wait()

        first = asyncio.create_task(hold(6))
        await asyncio.sleep(0)
        big = asyncio.create_task(hold(10))  # waits for the whole budget, and holds the others back
        small = asyncio.create_task(hold(4))
        await asyncio.sleep(0.01)
        assert budget.running == 1 and not small.done()
        big.cancel()
        await asyncio.sleep(0.01)
        assert budget.running == 2 and budget.used == 10  # the small one got in once the big one left the queue
        release.set()
        await asyncio.gather(first, small)
        with pytest.raises(asyncio.CancelledError):
            await big
        return budget

    budget = run(main())
    assert budget.used == budget.running == 0


def test_more_than_the_budget_is_refused_and_cores_is_positive():
    async def main():
        async with DecodeBudget(capacity=10, slots=1).admit(11):
            pass

    with pytest.raises(ValueError):
        run(main())
    with pytest.raises(ValueError):
        DecodeBudget(0, 1)
    assert cores() >= 1
