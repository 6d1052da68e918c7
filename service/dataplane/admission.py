"""The admission bound: at most ``SERVE_MAX_QUEUE_IMAGES`` images in flight, all pipelines
and stages together; past it a request is refused at once (503) and memory stays flat."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from ..errors import Overloaded
from ..metrics import Metrics


class Bound(Protocol):
    """What the dataplane needs of a bound: this one, or the pod's (``server/pod_admission.py``)."""

    def admit(self, n: int) -> AbstractContextManager[None]: ...


class Admission:
    """Counts the images admitted and not yet answered in this process.

    Args:
        limit: the most images in flight.
        metrics: ``serve_images_in_flight``.
    """

    def __init__(self, limit: int, metrics: Metrics):
        self.limit = limit
        self.metrics = metrics
        self.in_flight = 0

    @contextlib.contextmanager
    def admit(self, n: int) -> Iterator[None]:
        """Admit ``n`` images or raise ``Overloaded`` at once."""
        if self.in_flight + n > self.limit:
            raise Overloaded(
                f"the service is at capacity ({self.in_flight} images in flight; the limit is "
                f"{self.limit}); retry"
            )
        self.in_flight += n
        self.metrics.images_in_flight.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= n
            self.metrics.images_in_flight.set(self.in_flight)
