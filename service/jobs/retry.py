"""The one retry loop of the jobs: a job's chunk waiting for capacity, a callback's delivery.

``retry`` calls an async function until it returns, at most ``tries`` times, sleeping an
exponentially growing delay between tries; an exception for which ``retryable`` is false, or
the last try's exception, goes to the caller. Written here rather than taken from a library
(tenacity, stamina): the callers need no jitter, decide per exception, and count attempts,
which is these thirty lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays ``first_s``, ``first_s * factor``, ... each at most ``max_s``.

    Args:
        first_s: the delay after the first failed try.
        factor: how much each delay grows.
        max_s: the longest delay.
    """

    first_s: float
    factor: float = 2.0
    max_s: float = float("inf")

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.factor < 1 or self.max_s < 0:
            raise ValueError(f"backoff needs first_s >= 0, factor >= 1, max_s >= 0; got {self}")

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield min(delay, self.max_s)
            delay *= self.factor


async def retry(
    call: Callable[[int], Awaitable[T]],
    *,
    tries: int,
    backoff: Backoff,
    retryable: Callable[[Exception], bool],
    on_retry: Callable[[int, Exception], None] | None = None,
) -> T:
    """``await call(attempt)`` (attempt 1, 2, ...) until it returns; see the module."""
    if tries < 1:
        raise ValueError(f"tries must be at least 1, got {tries}")
    delays = backoff.delays()
    for attempt in range(1, tries + 1):
        try:
            return await call(attempt)
        except Exception as exc:
            if attempt == tries or not retryable(exc):
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
        await asyncio.sleep(next(delays))
    raise AssertionError("unreachable: the last try returns or raises")
