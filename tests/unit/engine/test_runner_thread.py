"""The runner's thread: results and exceptions reach the awaiting task, calls run in order on
one named thread, a cancelled wait does not stop the call, and close waits for what was handed
over."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.engine.runner_thread import RunnerThread


def test_results_and_exceptions_reach_the_caller_in_order_on_one_thread():
    asyncio.run(_results_and_exceptions_reach_the_caller_in_order_on_one_thread())


async def _results_and_exceptions_reach_the_caller_in_order_on_one_thread():
    runner = RunnerThread("runner-test-0", "runner-0")
    seen: list[tuple[int, str]] = []

    def work(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        if i == 3:
            raise ValueError("three")
        return i * i

    futures = [runner.submit(work, i) for i in range(6)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    runner.close()
    assert results[:3] == [0, 1, 4] and results[4:] == [16, 25]
    assert isinstance(results[3], ValueError) and str(results[3]) == "three"
    assert [i for i, _ in seen] == list(range(6))
    assert {name for _, name in seen} == {"runner-test-0"}


def test_a_cancelled_wait_lets_the_call_finish_and_drops_its_result():
    asyncio.run(_a_cancelled_wait_lets_the_call_finish_and_drops_its_result())


async def _a_cancelled_wait_lets_the_call_finish_and_drops_its_result():
    runner = RunnerThread("runner-test-1", "runner-1")
    finished = threading.Event()

    def slow() -> str:
        time.sleep(0.2)
        finished.set()
        return "late"

    future = runner.submit(slow)
    await asyncio.sleep(0.05)
    future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    # The next call runs after it: one thread, in order.
    assert await runner.submit(lambda: finished.is_set()) is True
    runner.close()


def test_close_waits_for_the_calls_handed_over():
    asyncio.run(_close_waits_for_the_calls_handed_over())


async def _close_waits_for_the_calls_handed_over():
    runner = RunnerThread("runner-test-2", "runner-2")
    done: list[int] = []
    for i in range(3):
        runner.submit(lambda i=i: (time.sleep(0.02), done.append(i)))
    await asyncio.to_thread(runner.close)
    assert done == [0, 1, 2]
    runner.close()  # twice: nothing to do


def test_nothing_of_a_call_stays_alive_while_the_thread_waits():
    """A batch's items are views of a front end's shared memory, which the accelerator process
    unmaps only once no view of it is left: an idle runner thread must not hold the last call's
    arguments, result or exception."""
    asyncio.run(_nothing_of_a_call_stays_alive_while_the_thread_waits())


async def _nothing_of_a_call_stays_alive_while_the_thread_waits():
    import weakref

    import numpy as np

    runner = RunnerThread("runner-test-2", "runner-2")

    def ok(item: np.ndarray) -> np.ndarray:
        return item * 2

    def fails(item: np.ndarray) -> None:
        raise ValueError(f"no: {item.shape}")

    for fn in (ok, fails):
        item = np.zeros(8)
        gone = weakref.ref(item)
        answer = await asyncio.gather(runner.submit(fn, item), return_exceptions=True)
        del item, answer
        deadline = time.monotonic() + 5
        while gone() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the thread drops the call right after answering it
        assert gone() is None, f"the idle thread still holds {fn.__name__}'s argument"
    runner.close()
