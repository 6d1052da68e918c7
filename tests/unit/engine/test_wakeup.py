"""The batcher's wake-up: set, clear, and a timed wait that says which of the two ended it."""

import asyncio

import pytest

from service.engine.wakeup import Wakeup


def test_a_set_wakeup_returns_at_once_until_cleared():
    async def main():
        wakeup = Wakeup()
        wakeup.set()
        assert await wakeup.wait(0.0) is True
        assert await wakeup.wait(0.0) is True  # still set: waiting does not clear it
        wakeup.clear()
        assert await wakeup.wait(0.01) is False  # nobody set it

    asyncio.run(main())


def test_set_wakes_the_waiter_before_its_timeout():
    async def main():
        wakeup = Wakeup()
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, wakeup.set)
        started = loop.time()
        assert await wakeup.wait(5.0) is True
        assert loop.time() - started < 2.0
        # Its timer is gone with the wait: a later wait is not ended by it.
        wakeup.clear()
        assert await wakeup.wait(0.05) is False

    asyncio.run(main())


def test_a_wait_without_timeout_ends_only_when_set():
    async def main():
        wakeup = Wakeup()
        waiter = asyncio.ensure_future(wakeup.wait())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        wakeup.set()
        assert await waiter is True

    asyncio.run(main())


def test_a_cancelled_wait_leaves_the_wakeup_usable():
    async def main():
        wakeup = Wakeup()
        waiter = asyncio.ensure_future(wakeup.wait(5.0))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        wakeup.set()  # no waiter to answer: no error
        assert await wakeup.wait(1.0) is True

    asyncio.run(main())


def test_one_waiter_at_a_time():
    async def main():
        wakeup = Wakeup()
        first = asyncio.ensure_future(wakeup.wait(5.0))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="one waiter"):
            await wakeup.wait(1.0)
        wakeup.set()
        assert await first is True

    asyncio.run(main())
