"""Messages between a front end and the accelerator process: length-prefixed pickles over a
Unix stream socket, one :class:`Channel` at each end.

What crosses (tuples; the first element names the message):

* front end -> engine: ``("hello", index, arena, slots, slot_bytes)`` once;
  ``("run", id, pipeline, slot, shape, dtype, deadline, inline)`` per item (``slot`` -1:
  the item's bytes are ``inline``); ``("cancel", id)`` when the request gave up.
* engine -> front end: ``("infos", {name: PipelineInfo})`` at hello and on every change;
  ``("done", id, slot, shape, dtype, batch_info, inline)`` with the output row in the slot (or
  ``inline``); ``("fail", id, error)`` with a ``ServeError``. Every ``run`` gets exactly one
  ``done`` or ``fail``: only then may the front end reuse the slot.

Only the engine's own code and this package's client talk over it; both run the same version.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
# A message carries at most one inline item or row; an over-sized one is a bug, not traffic.
MAX_MESSAGE = 1 << 30


class Channel(asyncio.Protocol):
    """One end of a connection: ``send`` a message; ``on_message`` receives each one.

    Args:
        on_message: called with each message, in order, on the event loop.
        on_lost: called once when the connection ends (``None``, or the exception).
    """

    def __init__(
        self,
        on_message: Callable[[Any], None],
        on_lost: Callable[[Exception | None], None] | None = None,
    ):
        self._on_message = on_message
        self._on_lost = on_lost
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= 4:
            (size,) = _LENGTH.unpack_from(buffer, offset)
            if size > MAX_MESSAGE:
                log.error("channel: a %d-byte message; closing", size)
                self.close()
                return
            end = offset + 4 + size
            if len(buffer) < end:
                break
            message = pickle.loads(memoryview(buffer)[offset + 4 : end])
            offset = end
            self._on_message(message)
            if self.closed:
                return
        del buffer[:offset]

    def send(self, message: Any) -> bool:
        """Queue ``message`` (never blocks); False when the connection is gone."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.transport.writelines((_LENGTH.pack(len(payload)), payload))
        return True

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._on_lost is not None:
            self._on_lost(exc)
