"""The batcher's wake-up: new items, or a batch done. ``asyncio.Event`` with a timed wait.

The batcher waits on it once or twice per batch, often with a timeout that runs out (the
regrouping and coalescing budgets, a fraction of a millisecond). ``asyncio.wait_for`` around
``Event.wait`` pays for a task, a timer and two exceptions each time: ~16 µs of CPU per
expired wait on the build machine, against ~4 µs for one future and one timer here
(``python -m loadtest.bench.engine_parts``). One waiter at a time: the batcher's loop.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[bool] | None = None

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout: float | None = None) -> bool:
        """Until :meth:`set` (True) or ``timeout`` seconds pass (False)."""
        if self._set:
            return True
        if self._waiter is not None:
            raise RuntimeError("the wake-up has one waiter at a time")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
