"""Each front end's event loop says it still turns; the supervisor replaces one that stopped.

A front end whose event loop no longer turns (a call that blocks, a deadlock, a process stopped
by a signal) still holds its listening sockets, and the kernel goes on handing it its share of
the new connections (``ports.py``), which nobody answers. Its process is alive, so nothing else
notices: a liveness probe opens a new connection each time and reaches that front end one time
in N. So each front end writes the time into its slot of a small shared file on every tick of
its uvicorn server (10 a second, on its event loop), and the supervisor kills a front end whose
last beat is older than ``SERVE_FRONTEND_STALL_S``, then replaces it as any front end that died.
A front end is judged from its first beat on (its start-up is not).
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

_WORD = 8  # one float64 per front end: time.monotonic() of its last beat, 0: none yet


def create(path: Path, processes: int) -> None:
    """The supervisor: a file of ``processes`` slots, none beaten yet."""
    path.write_bytes(b"\0" * (_WORD * processes))


class Heartbeats:
    """The shared file, mapped: a front end calls :meth:`beat`, the supervisor :meth:`age`.
    ``time.monotonic()`` reads one clock for every process of the machine."""

    def __init__(self, path: Path):
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self._times = memoryview(self._map).cast("d")  # aligned 8-byte writes: never torn

    def beat(self, index: int) -> None:
        self._times[index] = time.monotonic()

    def clear(self, index: int) -> None:
        """The slot of a front end about to start: it is judged from its own first beat."""
        self._times[index] = 0.0

    def age(self, index: int) -> float | None:
        """Seconds since front end ``index`` last beat; None before its first beat."""
        last = self._times[index]
        return time.monotonic() - last if last else None
