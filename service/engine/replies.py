"""Where an item's answer goes: the batcher's :class:`Reply` protocol, and the asyncio future
of callers in the same process as one."""

from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np

from ..errors import ShuttingDown
from ..pipeline.info import BatchInfo

GIVEN_UP = ShuttingDown("the request gave up", "cancelled")


class Reply(Protocol):
    """Where one item's answer goes: ``(output_row, BatchInfo)`` or a ``ServeError``.

    The batcher answers every item it queued exactly once, even one whose reply is already
    ``done()`` (its request gave up: it is dropped before the model, or its batch was
    running): a reply ignores what comes after it is done, and the accelerator process's
    ticket learns from it that the item's slot is free again.
    """

    trace: str | None  # the request's W3C traceparent, for the batch's span (traces on)

    def done(self) -> bool: ...

    def set_result(self, result: tuple[np.ndarray, BatchInfo]) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...


class FutureReply:
    """An ``asyncio.Future`` as a :class:`Reply` that may be answered after it was cancelled."""

    __slots__ = ("future", "trace")

    def __init__(self, future: asyncio.Future, trace: str | None = None):
        self.future = future
        self.trace = trace

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, result: tuple[np.ndarray, BatchInfo]) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def set_exception(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
