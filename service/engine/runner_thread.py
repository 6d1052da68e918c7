"""A dedicated thread that runs one batch at a time for the event loop: a runner instance's
thread, or the assembly thread.

``loop.run_in_executor`` goes through a ``concurrent.futures.Future`` chained to an asyncio
future (two futures, a work item and their callbacks per call); this hands the call over a
``SimpleQueue`` and answers the event loop's own future with one ``call_soon_threadsafe``.
It matters because it happens once per batch on the accelerator process's event loop, which
is the limit at small batches (``make bench-engine`` reports that loop's CPU per batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import queue
import threading
from collections.abc import Callable
from typing import Any


class RunnerThread:
    """One thread running the calls :meth:`submit` hands it, in order.

    Args:
        name: the thread's name in Python.
        system_name: its name for the system (``top -H``, py-spy; 15 characters at most).
    """

    def __init__(self, name: str, system_name: str):
        self.system_name = system_name
        self._calls: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run ``fn(*args)`` in the thread; the future (of the running loop) gets its result
        or exception. A cancelled future does not stop the call: it runs to its end, and its
        result is dropped."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._calls.put((loop, future, fn, args))
        return future

    def close(self) -> None:
        """Let the calls already handed over finish, then end the thread."""
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join()

    def _serve(self) -> None:
        name_thread(self.system_name)
        while (call := self._calls.get()) is not None:
            _run(*call)
            # Nothing of a call stays alive while the thread waits for the next: its items are
            # views of a front end's shared memory, which is unmapped only once none is left.
            del call


def _run(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future, fn: Callable[..., Any], args: tuple
) -> None:
    try:
        result = fn(*args)
    except BaseException as exc:  # noqa: BLE001 - the awaiting task gets it
        _answer(loop, _set_exception, future, exc)
        # The exception's traceback holds this frame: without the future in it, there is no
        # cycle (future, exception, frame), and what the call held goes with the exception.
        del future
    else:
        _answer(loop, _set_result, future, result)


def _answer(
    loop: asyncio.AbstractEventLoop,
    answer: Callable[[asyncio.Future, Any], None],
    future: asyncio.Future,
    value: Any,
) -> None:
    try:
        loop.call_soon_threadsafe(answer, future, value)
    except RuntimeError:  # the loop is closed: nobody waits
        pass


def _set_result(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def name_thread(name: str) -> None:
    """Name this thread for the system too (top -H, py-spy, /proc/PID/task/*/comm)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(15, name[:15].encode(), 0, 0, 0)  # PR_SET_NAME
