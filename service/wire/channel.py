"""Frames over a Unix stream socket: a 4-byte little-endian length, then one message.

A :class:`Channel` is one end of a connection. What its messages are is the caller's: the
accelerator process and the front ends pass the typed messages of ``messages.py`` (MessagePack,
one decode call per frame); the job store's socket (``jobs/shared.py``) passes pickles. All the
frames that arrived in one read are decoded in that one wake-up.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from collections.abc import Callable
from typing import Any

import msgspec

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
# A message carries at most one batch's inline items or rows; an over-sized one is a bug.
MAX_MESSAGE = 1 << 30

Decode = Callable[[memoryview], Any]
Encode = Callable[[Any], bytes]


def pickle_codec() -> tuple[Encode, Decode]:
    """Pickles both ways (between processes of one build that trust each other)."""
    return (lambda m: pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)), pickle.loads


def msgpack_codec(incoming: Any) -> tuple[Encode, Decode]:
    """MessagePack of ``msgspec`` structs; ``incoming`` is the type (a tagged union) read."""
    return msgspec.msgpack.Encoder().encode, msgspec.msgpack.Decoder(incoming).decode


class Channel(asyncio.Protocol):
    """One end of a connection: ``send`` a message; ``on_message`` receives each one.

    Args:
        on_message: called with each message, in order, on the event loop.
        on_lost: called once when the connection ends (``None``, or the exception).
        codec: how messages become bytes and back (default: pickles).
    """

    def __init__(
        self,
        on_message: Callable[[Any], None],
        on_lost: Callable[[Exception | None], None] | None = None,
        codec: tuple[Encode, Decode] | None = None,
    ):
        self._on_message = on_message
        self._on_lost = on_lost
        self._encode, self._decode = codec or pickle_codec()
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
            try:
                message = self._decode(memoryview(buffer)[offset + 4 : end])
            except Exception as exc:  # the other end does not speak this protocol
                log.error("channel: an undecodable message (%s); closing", exc)
                self.close()
                return
            offset = end
            self._on_message(message)
            if self.closed:
                return
        del buffer[:offset]

    def send(self, message: Any) -> bool:
        """Queue ``message`` (never blocks); False when the connection is gone."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        payload = self._encode(message)
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
