# ruff: noqa: T201  (a benchmark: it reports on stdout)
"""What three pieces of the accelerator process's per-batch work cost alone, run by hand:

    .venv/bin/python -m loadtest.bench.engine_parts

- the batcher's timed wait: ``asyncio.wait_for`` around ``Event.wait`` against
  ``engine/wakeup.py``'s ``Wakeup``, expired and woken (CPU per wait, uvloop);
- filling a batch buffer from 224x224x3 slot-sized items: ``np.stack(out=...)`` against the
  row copies of ``ModelRunner.assemble``, at 1, 2 and 32 items;
- a slot's view: ``np.ndarray(buffer=...)``, which holds no export of the segment, against
  ``Arena.view``, whose ``np.frombuffer`` array does.

Not used by the service or the tests.
"""

from __future__ import annotations

import asyncio
import time
import timeit
from functools import partial

import numpy as np

from service.engine.wakeup import Wakeup
from service.wire.arena import Arena

WAITS = 3000
SHAPE = (224, 224, 3)


async def _waits() -> dict[str, float]:
    loop = asyncio.get_running_loop()
    event, wakeup = asyncio.Event(), Wakeup()

    async def wait_for(woken: bool) -> None:
        event.clear()
        if woken:
            loop.call_soon(event.set)
        try:
            await asyncio.wait_for(event.wait(), 1.0 if woken else 1e-5)
        except TimeoutError:
            pass

    async def wakeup_wait(woken: bool) -> None:
        wakeup.clear()
        if woken:
            loop.call_soon(wakeup.set)
        await wakeup.wait(1.0 if woken else 1e-5)

    out = {}
    for name, wait in (("wait_for", wait_for), ("Wakeup", wakeup_wait)):
        for woken in (False, True):
            start = time.process_time()
            for _ in range(WAITS):
                await wait(woken)
            spent = (time.process_time() - start) / WAITS
            out[f"{name} {'woken' if woken else 'expired'}"] = 1e6 * spent
    return out


def _best_us(fn, number: int) -> float:  # type: ignore[no-untyped-def]
    return 1e6 * min(timeit.repeat(fn, number=number, repeat=5)) / number


def _stack(items: list[np.ndarray], buf: np.ndarray) -> None:
    np.stack(items, out=buf[: len(items)])


def _rows(items: list[np.ndarray], buf: np.ndarray) -> None:
    for i, item in enumerate(items):
        buf[i] = item


def _ndarray(arena: Arena) -> np.ndarray:
    return np.ndarray(SHAPE, dtype="|u1", buffer=arena.shm.buf, offset=3 * arena.stride)


def main() -> None:
    import uvloop

    uvloop.run(_waits())  # warm-up: the first waits build what the loop keeps
    for name, us in uvloop.run(_waits()).items():
        print(f"wait, {name}: {us:.1f} µs of CPU")
    rng = np.random.default_rng(0)
    for n in (1, 2, 32):
        items = [rng.integers(0, 255, SHAPE, dtype=np.uint8) for _ in range(n)]
        buf = np.zeros((n, *SHAPE), np.uint8)
        number = max(20, 2000 // n)
        print(
            f"batch of {n}: np.stack {_best_us(partial(_stack, items, buf), number):.1f} µs, "
            f"row copies {_best_us(partial(_rows, items, buf), number):.1f} µs"
        )
    arena = Arena(8, SHAPE[0] * SHAPE[1] * SHAPE[2])
    try:
        old = _best_us(partial(_ndarray, arena), 20000)
        new = _best_us(partial(arena.view, 3, SHAPE, "|u1"), 20000)
        print(f"slot view: np.ndarray(buffer=) {old:.2f} µs, Arena.view {new:.2f} µs")
    finally:
        arena.close()


if __name__ == "__main__":
    main()
