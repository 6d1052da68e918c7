"""The admission bound for the whole pod: at most ``SERVE_MAX_QUEUE_IMAGES`` images in flight
over every front-end process together.

A small shared file holds one counter per front end. Admitting takes an exclusive ``flock``
on it, sums the counters and adds to this front end's own; releasing subtracts from it (only
its owner writes a counter). ``flock`` is released by the kernel if its holder dies, so a
front end killed at any moment never leaves the bound stuck; the supervisor zeroes a dead
front end's counter before it starts the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import Overloaded
from ..metrics import Metrics

_WORD = 8  # one int64 counter per front end


def create(path: Path, processes: int) -> None:
    """The supervisor: a zeroed file of ``processes`` counters."""
    path.write_bytes(b"\0" * (_WORD * processes))


def reset(path: Path, index: int) -> None:
    """The supervisor: front end ``index`` is gone; nothing of it is in flight any more."""
    with open(path, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(index * _WORD)
        f.write(b"\0" * _WORD)


class SharedAdmission:
    """Front end ``index``'s side of the pod's bound (the dataplane's ``admission``).

    Args:
        path: the shared file (``create``).
        index: this front end's counter.
        limit: the most images in flight in the pod.
        metrics: ``serve_images_in_flight`` (each front end reports its own; they sum).
    """

    def __init__(self, path: Path, index: int, limit: int, metrics: Metrics):
        self.limit = limit
        self.metrics = metrics
        self.index = index
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, 0)
        self._counts = np.ndarray((len(self._map) // _WORD,), dtype=np.int64, buffer=self._map)

    @property
    def in_flight(self) -> int:
        """This front end's images in flight."""
        return int(self._counts[self.index])

    @contextlib.contextmanager
    def admit(self, n: int) -> Iterator[None]:
        """Admit ``n`` images or raise ``Overloaded`` at once."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            total = sum(self._counts.tolist())  # a few counters: cheaper than numpy's sum
            if total + n > self.limit:
                raise Overloaded(
                    f"the service is at capacity ({total} images in flight; the limit is "
                    f"{self.limit}); retry"
                )
            self._counts[self.index] += n
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self.metrics.images_in_flight.set(self.in_flight)
        try:
            yield
        finally:
            self._counts[self.index] -= n
            self.metrics.images_in_flight.set(self.in_flight)
