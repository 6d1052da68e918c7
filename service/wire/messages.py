"""Everything that crosses between a front end and the accelerator process, declared once.

Both processes import this module and nothing else of each other. Each message is a
``msgspec.Struct`` with a tag; a frame on the socket is a 4-byte little-endian length and one
MessagePack-encoded message (``channel.py``). Pixels and output rows do not travel in messages
unless they must: they sit in the front end's shared-memory arena (``arena.py``), and a message
names the slot.

The conversation::

    front end                                   accelerator process
    Hello(version, frontend, arena...)   ──▶
                                         ◀──    Welcome(version, infos)   or Refused(reason)
    Submit([Item, Item, ...])            ──▶    (every item ready in one event-loop turn)
    Cancel([id, ...])                    ──▶    (requests that gave up)
    FlushMetrics(token)                  ──▶    (a scrape in this front end)
                                         ◀──    MetricsFlushed(token)  (what the accelerator
                                                 process counted so far is in its files)
                                         ◀──    Infos({name: PipelineInfo})   (a state change)
                                         ◀──    Done(ids, slots, queue_s, ...)  (one batch's
                                                 items of this front end, rows in their slots)
                                         ◀──    Failed(ids, error)

Rules both ends keep:

* ``Hello`` comes first and carries :data:`VERSION`; the accelerator process answers
  ``Refused`` and closes when it differs (both run from one image, so a mismatch is a build
  error, reported loudly: the front end's pipelines turn ``failed`` and ``/healthz`` 503).
  It is refused alike, with ``arena`` set, when the arena it names cannot be attached (the
  segment left ``/dev/shm``, or ``slots`` x ``slot_bytes`` do not fit it): the front end then
  makes a new arena and comes back after a pause.
* Every ``Item`` gets exactly one ``Done`` or ``Failed``, whatever happens (cancelled, past its
  deadline, its batch failed, the accelerator process stopping); only then may the front end
  reuse its slot, since the accelerator process may be reading it until that answer.
* ``deadline`` is ``time.monotonic()`` of the front end: the same clock in every process of
  one machine (``CLOCK_MONOTONIC``).

To add a field: append it with a default at the end of its struct and bump :data:`VERSION`.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from ..errors import ServeError
from ..pipeline.info import PipelineInfo

# Bumped whenever a message changes shape or meaning.
VERSION = 2


class Hello(msgspec.Struct, tag="hello", array_like=True):
    """The front end's first message: who it is and where its arena is."""

    version: int
    frontend: int  # the front end's index (for logs)
    arena: str | None  # the shared-memory segment's name; None: every item inline
    slots: int
    slot_bytes: int


class Item(msgspec.Struct, array_like=True, gc=False):
    """One item for a pipeline's stages after decode: an image's pixels or a pixel tensor."""

    id: int  # unique per front end while in flight
    pipeline: str
    slot: int  # where its bytes are in the arena; -1: in ``data``
    shape: tuple[int, ...]
    dtype: str  # numpy's ``dtype.str``, e.g. ``|u1``
    deadline: float  # time.monotonic(); past it the item is dropped before the model
    data: bytes | None = None
    trace: str | None = None  # the request's W3C ``traceparent``, when tracing is on


class Submit(msgspec.Struct, tag="submit", array_like=True, gc=False):
    """Items of one front end that were ready together."""

    items: list[Item]


class Cancel(msgspec.Struct, tag="cancel", array_like=True, gc=False):
    """Requests that gave up: their items are dropped if they have not started."""

    ids: list[int]


class FlushMetrics(msgspec.Struct, tag="flush-metrics", array_like=True):
    """A scrape is about to read the metrics files: write what is counted and not yet written
    (the accelerator process writes its per-batch metrics every ``Tally.interval_s``, not per
    batch), then answer ``MetricsFlushed`` with the same token."""

    token: int


class MetricsFlushed(msgspec.Struct, tag="metrics-flushed", array_like=True):
    token: int


class Welcome(msgspec.Struct, tag="welcome", array_like=True):
    """The accelerator process accepts the front end; the pipelines as they are now."""

    version: int
    infos: dict[str, PipelineInfo]


class Refused(msgspec.Struct, tag="refused", array_like=True):
    """The accelerator process will not talk to this front end (the connection closes).
    ``arena``: only the arena it named could not be attached; it may come back with a new one.
    (A field at the end, with a default: other builds still read this message.)"""

    reason: str
    arena: bool = False


class Infos(msgspec.Struct, tag="infos", array_like=True):
    """Pipelines whose description or state changed."""

    infos: dict[str, PipelineInfo]


class Done(msgspec.Struct, tag="done", array_like=True, gc=False):
    """Items of this front end that finished in one batch; each row is in the item's slot, or
    (slot -1) the rows follow one another in ``data``, in order."""

    ids: list[int]
    slots: list[int]
    queue_s: list[float]  # each item's wait in the first model stage's queue
    shape: tuple[int, ...]  # of one row
    dtype: str
    compute_s: float  # the batch's compute time (summed over the model stages)
    batch_size: int  # the first model stage's batch
    padded_size: int
    data: bytes | None = None


class Error(msgspec.Struct, array_like=True):
    """A :class:`~service.errors.ServeError` on the wire."""

    kind: str  # its class's name in ``service.errors``
    message: str
    code: str
    details: dict[str, Any] = {}

    @classmethod
    def of(cls, exc: ServeError) -> Error:
        # Details come from anywhere (a user's cpu stage): NumPy scalars and arrays become
        # numbers and lists, anything else MessagePack (or the JSON body) cannot hold its str.
        details = msgspec.to_builtins(exc.details, enc_hook=_builtin) if exc.details else {}
        return cls(type(exc).__name__, exc.message, exc.code, details)

    def rebuild(self) -> ServeError:
        kind = _ERRORS.get(self.kind, ServeError)
        error = kind.__new__(kind)
        ServeError.__init__(error, self.message, self.code, **self.details)
        return error


class Failed(msgspec.Struct, tag="failed", array_like=True, gc=False):
    """Items that failed alike; ``error`` None: cancelled (nobody waits for the answer)."""

    ids: list[int]
    error: Error | None


def _builtin(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)


ToEngine = Hello | Submit | Cancel | FlushMetrics
ToFrontEnd = Welcome | Refused | Infos | Done | Failed | MetricsFlushed


def _subclasses(cls: type[ServeError]) -> dict[str, type[ServeError]]:
    found = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        found.update(_subclasses(sub))
    return found


# Every domain error lives in service.errors, so this sees them all once that module is loaded.
_ERRORS = _subclasses(ServeError)
