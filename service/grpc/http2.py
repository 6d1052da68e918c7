"""HTTP/2 for gRPC, on the front end's own event loop: the server side of one connection.

What the ``native`` gRPC server (``native.py``) runs on instead of grpcio's core. grpcio spends
~590 µs per unary call more than the HTTP path on a CPU-bound front end (its Cython layer on
the loop, its event-engine and poller threads: docs/BENCHMARKS.md); this module is written for
what gRPC uses of HTTP/2 and nothing else, so that a call costs a few frames parsed with
``struct`` and one header block decoded by ``hpack``.

What it does, per RFC 9113 as far as a gRPC server needs:

* the preface, SETTINGS both ways (the peer's acknowledged within :attr:`Limits.handshake_s`,
  or the connection is closed), PING answered, GOAWAY both ways, RST_STREAM, PRIORITY ignored,
  CONTINUATION assembled (bounded), unknown frame types ignored;
* flow control both ways: the peer's windows hold back DATA until it opens them; ours are
  returned as the bytes arrive while a stream holds at most one message's worth unread, so a
  stream whose handler stops reading (a ``ModelStreamInfer`` stream at its depth) stops its
  client;
* the stream states a server sees: a stream opened by a client HEADERS, half-closed by its
  END_STREAM, closed by the answer's END_STREAM (and RST_STREAM NO_ERROR when the client had
  not finished) or by either side's RST_STREAM;
* gRPC's framing of messages (the 5-byte prefix; gzip and deflate decompressed, bounded), and
  answers as HEADERS, DATA and trailers, or trailers only;
* the limits grpcio enforced (docs/RELIABILITY.md, "HTTP/2 and gRPC"): concurrent streams
  (past them REFUSED_STREAM), the message size (RESOURCE_EXHAUSTED without buffering it), the
  metadata size, the header block, idle connections, keep-alive pings to find dead peers, and
  floods (pings, resets, writes the peer does not read: the connection stops reading while
  its answers wait in the socket).

The gRPC layer (``native.py``) gets a :class:`Stream` per call through ``dispatch`` and reads
its messages and writes its answer through it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import socket
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hpack

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# Error codes (RFC 9113, section 7).
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED = 0, 1, 3, 5
FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR = 6, 7, 9
ENHANCE_YOUR_CALM = 11
# SETTINGS identifiers.
S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE = 3, 4
S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 5, 6

MAX_FRAME = 16_384  # ours: we do not raise SETTINGS_MAX_FRAME_SIZE
MAX_WINDOW = (1 << 31) - 1
# The window of each stream we open to the peer, and the connection's. A stream's unread bytes
# are bounded apart from it (one message), so a larger window only lets a message in at once.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 1 << 24
# The answers a peer does not read: past this many bytes waiting in the socket, the connection
# reads no more frames from it until they drain (a peer that sends pings or SETTINGS and never
# reads their acknowledgements is held to what it reads).
WRITE_HIGH_WATER = 256 * 1024
# Pings within this long of the last one, without an answer of ours between them, are
# strikes; the third closes the connection (GOAWAY ENHANCE_YOUR_CALM "too_many_pings"), as
# grpcio's server did.
PING_INTERVAL_S = 10.0
PING_STRIKES = 2
# Calls a client may cancel (RST_STREAM while the server works on them) per second, with a
# burst of as many: past it, the connection's new streams are refused (REFUSED_STREAM, safe to
# retry) until the rate falls back, as grpcio does; the calls in flight go on. Streams opened
# and reset at once are the "rapid reset" attack (CVE-2023-44487): each starts work the client
# never waits for.
RESETS_PER_S = 200
# The clock of that budget (a test stops it to count resets without a race against time).
reset_clock = time.monotonic
# How long a closing connection reads and drops what the peer still sends (see _shut).
LINGER_S = 1.0

_FRAME_HEADER = struct.Struct(">I")  # length (24 bits) and type as one word; then flags, id
_ID = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


@dataclass(frozen=True)
class Limits:
    """Args:
    max_streams: streams open at once per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    message_bytes: the largest message (its declared length; RESOURCE_EXHAUSTED past it).
    metadata_bytes: the largest header list of a call (RFC 7541's size: name + value + 32
        per field); past it the call is answered RESOURCE_EXHAUSTED.
    idle_s: a connection without streams for this long is closed (GOAWAY).
    keepalive_s: a connection silent this long is pinged.
    handshake_s: the preface and the acknowledgement of our SETTINGS must come within this.
    ping_timeout_s: a keep-alive ping unanswered this long: the peer is taken for gone.
    """

    max_streams: int
    message_bytes: int
    metadata_bytes: int
    idle_s: float
    keepalive_s: float
    handshake_s: float = 5.0
    ping_timeout_s: float = 20.0


class ConnectionError_(Exception):
    """A connection error: GOAWAY with this code, then the connection is closed."""

    def __init__(self, code: int, debug: str):
        super().__init__(debug)
        self.code = code
        self.debug = debug


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        _FRAME_HEADER.pack((len(payload) << 8) | kind)
        + bytes((flags,))
        + _ID.pack(stream)
        + payload
    )


def _hpack_int(value: int, prefix: int) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """One header field as an HPACK literal without indexing, new name: no state shared with
    the peer's decoder, so every block we send stands alone."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


# ":status: 200" is the static table's entry 8; content-type and the encodings we accept.
RESPONSE_HEADERS = (
    b"\x88"
    + literal(b"content-type", b"application/grpc")
    + literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
)
_OK_TRAILERS = literal(b"grpc-status", b"0")


def _percent(text: str) -> bytes:
    """grpc-message's encoding: UTF-8, then every byte outside printable ASCII and '%'
    percent-encoded."""
    raw = text.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def trailers(code: int, message: str = "", metadata: tuple = ()) -> bytes:
    """The header block of a call's status."""
    if code == 0 and not metadata:
        return _OK_TRAILERS
    out = [literal(b"grpc-status", str(code).encode())]
    if message:
        out.append(literal(b"grpc-message", _percent(message)))
    for key, value in metadata:
        name = key.encode() if isinstance(key, str) else key
        if isinstance(value, bytes):
            value = base64.b64encode(value).rstrip(b"=") if name.endswith(b"-bin") else value
        else:
            value = value.encode()
        out.append(literal(name.lower(), value))
    return b"".join(out)


def _time_out(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _response_head(stream_id: int) -> bytes:
    return frame(HEADERS, END_HEADERS, stream_id, RESPONSE_HEADERS)


class StreamReset(Exception):
    """The stream ended before its call did (the client reset it, the connection closed)."""


class Stream:
    """One call: its headers, its request messages as they complete, its answer.

    The handler reads with :meth:`read` and answers with :meth:`send_message` (then
    :meth:`finish`), or with :meth:`finish` alone (trailers only).
    """

    __slots__ = (
        "id", "conn", "headers", "path", "deadline", "encoding", "inbox", "waiter",
        "remote_closed", "closed", "rx", "body", "expected", "compressed", "held", "owed",
        "send_window", "out", "out_bytes",
        "out_end", "headers_sent", "task", "timer", "writable", "error",
    )  # fmt: skip

    def __init__(self, conn: Connection, stream_id: int, headers: list[tuple[bytes, bytes]]):
        self.id = stream_id
        self.conn = conn
        self.headers = headers
        self.path = b""
        self.deadline: float | None = None  # the loop's clock
        self.encoding = b""
        self.inbox: collections.deque[bytes | bytearray] = collections.deque()
        self.waiter: asyncio.Future | None = None
        self.remote_closed = False
        self.closed = False  # our END_STREAM sent, or reset either way
        self.rx = bytearray()  # a message's prefix, when it came split over frames
        self.body: bytearray | None = None  # the message being received
        self.expected = 0  # its announced length
        self.compressed = 0  # its flag
        self.held = 0  # bytes received and not yet read by the handler
        self.owed = 0  # window not yet returned to the peer
        self.send_window = conn.peer_window
        self.out: collections.deque[bytes] = collections.deque()  # DATA waiting for windows
        self.out_bytes = 0
        self.out_end: bytes | None = None  # the trailers, once the DATA before them is out
        self.headers_sent = False
        self.task: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.writable: asyncio.Future | None = None
        self.error: str | None = None  # why no more messages come (a transport-level end)

    # -- reading ---------------------------------------------------------------------------

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The call's custom metadata, as grpcio hands it to a servicer: pseudo-headers and
        the transport's own fields left out, ``-bin`` values decoded."""
        out: list[tuple[str, str | bytes]] = []
        for name, value in self.headers:
            if name[:1] == b":" or name in _TRANSPORT_FIELDS:
                continue
            key = name.decode("latin-1")
            if key.endswith("-bin"):
                try:
                    out.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
                except ValueError:
                    continue
            else:
                out.append((key, value.decode("latin-1")))
        return tuple(out)

    async def read(self, timeout: float | None = None) -> bytes | bytearray | None:
        """The next request message; None once the client has ended its side. Raises
        :class:`StreamReset` when the stream is gone, ``TimeoutError`` when no message
        completes within ``timeout`` seconds."""
        timer = None
        try:
            while not self.inbox:
                if self.error is not None:
                    raise StreamReset(self.error)
                if self.remote_closed:
                    return None
                self.waiter = waiter = self.conn.loop.create_future()
                if timeout is not None and timer is None:
                    timer = self.conn.loop.call_later(timeout, _time_out, waiter)
                try:
                    await waiter
                finally:
                    self.waiter = None
        finally:
            if timer is not None:
                timer.cancel()
        return self._take()

    def _take(self) -> bytes | bytearray:
        message = self.inbox.popleft()
        self.held -= len(message) + 5
        if self.owed and self.held <= self.conn.hold_limit and not self.remote_closed:
            self.conn.window_update(self.id, self.owed)
            self.owed = 0
        return message

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- answering -------------------------------------------------------------------------

    def send_message(self, payload: bytes) -> None:
        """One answer message (headers first if not sent yet); what the windows hold back is
        sent as they open."""
        if self.closed:
            raise StreamReset(self.error or "closed")
        conn = self.conn
        message = b"\0" + len(payload).to_bytes(4, "big") + payload
        head = b""
        if not self.headers_sent:
            self.headers_sent = True
            head = frame(HEADERS, END_HEADERS, self.id, RESPONSE_HEADERS)
        if self.out or len(message) > min(self.send_window, conn.send_window, conn.peer_frame):
            if head:
                conn.write(head)
            self.out.append(message)
            self.out_bytes += len(message)
            conn.flush_stream(self)
            return
        self.send_window -= len(message)
        conn.send_window -= len(message)
        conn.write(head + frame(DATA, 0, self.id, message))

    def answer(self, payload: bytes) -> None:
        """A unary call's one answer and its OK status, in one write when the windows allow.
        Nothing if the stream has ended meanwhile (the client reset it, its deadline passed)."""
        if self.closed:
            return
        conn = self.conn
        message = b"\0" + len(payload).to_bytes(4, "big") + payload
        if self.headers_sent or len(message) > min(
            self.send_window, conn.send_window, conn.peer_frame
        ):
            self.send_message(payload)
            self.finish(0)
            return
        self.headers_sent = True
        self.send_window -= len(message)
        conn.send_window -= len(message)
        self.out_end = _OK_TRAILERS
        self.closed = True
        end = frame(HEADERS, END_HEADERS | END_STREAM, self.id, _OK_TRAILERS)
        if not self.remote_closed:  # the call is over: the client need not send the rest
            end += frame(RST_STREAM, 0, self.id, _ID.pack(NO_ERROR))
        conn.write(_response_head(self.id) + frame(DATA, 0, self.id, message) + end)
        conn.forget(self)

    async def drained(self) -> None:
        """Waits while this stream's answers wait for windows or the socket (a streaming
        handler's backpressure)."""
        while not self.closed and (self.out_bytes > 0 or self.conn.paused):
            self.writable = self.conn.loop.create_future()
            try:
                await self.writable
            finally:
                self.writable = None
        if self.closed and self.error is not None:
            raise StreamReset(self.error)

    def finish(self, code: int, message: str = "", metadata: tuple = ()) -> None:
        """The call's status: trailers after the answers, or trailers only. Once."""
        if self.closed or self.out_end is not None:
            return
        block = trailers(code, message, metadata)
        if not self.headers_sent:  # trailers only: one HEADERS frame
            self.headers_sent = True
            block = RESPONSE_HEADERS + block
        self.out_end = block
        self.conn.flush_stream(self)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


_TRANSPORT_FIELDS = frozenset(
    (b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding")
)
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def _not_grpc(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The HTTP status for a request that is not a gRPC call (b"" for one that is): 405 for a
    method other than POST, 415 for a content-type other than application/grpc[+...|;...]."""
    method = content_type = b""
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b"content-type":
            content_type = value
    if method != b"POST":
        return b"405"
    if content_type != b"application/grpc" and not content_type.startswith(
        (b"application/grpc+", b"application/grpc;")
    ):
        return b"415"
    return b""


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout (``TimeoutValue TimeoutUnit``, at most 8 digits) in seconds; None if it
    is not one."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


class Connection(asyncio.Protocol):
    """One client connection.

    Args:
        limits: the connection's limits.
        dispatch: called with each new :class:`Stream` once its headers are in; it answers
            the stream (usually by starting a task that does) and returns that task or None.
        on_close: called once the connection is gone.
    """

    def __init__(
        self,
        limits: Limits,
        dispatch: Callable[[Stream], asyncio.Future | None],
        on_close: Callable[[Connection], None],
    ):
        self.limits = limits
        self.dispatch = dispatch
        self.on_close = on_close
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.buffer = b""
        self.preface = False
        self.settled = False  # the peer acknowledged our SETTINGS
        self.decoder = hpack.Decoder()
        # The block is bounded before it is decoded (below); the list's size is checked after.
        self.decoder.max_header_list_size = 1 << 30
        self.block: bytearray | None = None  # a header block awaiting CONTINUATION
        self.block_stream = 0
        self.block_end = False
        self.block_limit = max(4 * limits.metadata_bytes, 64 * 1024)
        self.streams: dict[int, Stream] = {}
        self.last_id = 0
        self.peer_window = 65_535  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_frame = MAX_FRAME
        self.send_window = 65_535  # the peer's connection window
        self.recv_unreturned = 0
        self.hold_limit = limits.message_bytes + 5
        self.blocked: collections.OrderedDict[int, Stream] = collections.OrderedDict()
        self.paused = False  # the socket's buffer is past its high-water mark
        self.reading_paused = False
        self.going_away = False
        self.closed = False
        self.ping_last = 0.0
        self.ping_strikes = 0
        self.reset_budget = float(RESETS_PER_S)
        self.reset_at = reset_clock()
        self.last_active = time.monotonic()
        self.last_received = self.last_active
        self.ping_sent: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.idle_since: float | None = self.last_active

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # answers are small writes: none may wait for the peer's ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        settings = b"".join(
            _SETTING.pack(k, v)
            for k, v in (
                (S_MAX_CONCURRENT_STREAMS, self.limits.max_streams),
                (S_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (S_MAX_HEADER_LIST_SIZE, 2 * self.limits.metadata_bytes),
            )
        )
        transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, _ID.pack(CONNECTION_WINDOW - 65_535))
        )
        self.handshake = self.loop.call_later(self.limits.handshake_s, self._handshake_expired)
        self._schedule_tick()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_received = time.monotonic()
        buffer = self.buffer + data if self.buffer else data
        try:
            if not self.preface:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(buffer):
                        raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self.buffer = buffer
                    return
                if not buffer.startswith(PREFACE):
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self.preface = True
                buffer = buffer[len(PREFACE) :]
            self.buffer = self._frames(buffer)
        except ConnectionError_ as exc:
            self.abort(exc.code, exc.debug)
            return
        if self.recv_unreturned >= CONNECTION_WINDOW // 4:
            self.window_update(0, self.recv_unreturned)
            self.recv_unreturned = 0

    def eof_received(self) -> bool:
        return False  # close: the client ended its side

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        for timer in (self.timer, getattr(self, "handshake", None)):
            if timer is not None:
                timer.cancel()
        for stream in list(self.streams.values()):
            self._end_stream(stream, "the connection closed")
        self.streams.clear()
        self.on_close(self)

    def pause_writing(self) -> None:
        self.paused = True
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()
        for stream in list(self.streams.values()):
            if stream.writable is not None and not stream.writable.done():
                stream.writable.set_result(None)

    # -- frames in -------------------------------------------------------------------------

    def _frames(self, buffer: bytes) -> bytes:
        """Handles every complete frame of ``buffer``; returns what is left of it."""
        at, end = 0, len(buffer)
        unpack = _FRAME_HEADER.unpack_from
        view = memoryview(buffer)
        while end - at >= 9 and not self.closed:
            (word,) = unpack(buffer, at)
            size, kind = word >> 8, word & 0xFF
            if size > MAX_FRAME:
                raise ConnectionError_(FRAME_SIZE_ERROR, f"a frame of {size} bytes")
            if end - at < 9 + size:
                break
            flags = buffer[at + 4]
            sid = unpack(buffer, at + 5)[0] & 0x7FFFFFFF
            payload = view[at + 9 : at + 9 + size]
            at += 9 + size
            if self.block is not None and kind != CONTINUATION:
                raise ConnectionError_(PROTOCOL_ERROR, "a header block was interrupted")
            if kind == DATA:
                self._data(sid, flags, payload)
            elif kind == HEADERS:
                self._headers(sid, flags, payload)
            elif kind == CONTINUATION:
                self._continuation(sid, flags, payload)
            elif kind == SETTINGS:
                self._settings(sid, flags, payload)
            elif kind == WINDOW_UPDATE:
                self._window_update(sid, payload)
            elif kind == PING:
                self._ping(sid, flags, payload)
            elif kind == RST_STREAM:
                self._rst_stream(sid, payload)
            elif kind == GOAWAY:
                self._goaway(sid)
            elif kind == PRIORITY:
                if sid == 0 or size != 5:
                    raise ConnectionError_(PROTOCOL_ERROR, "a malformed PRIORITY frame")
            elif kind == PUSH_PROMISE:
                raise ConnectionError_(PROTOCOL_ERROR, "a client may not push")
            # Unknown frame types are ignored (RFC 9113, section 4.1).
        return bytes(view[at:]) if at < end else b""

    @staticmethod
    def _unpad(flags: int, payload: memoryview) -> memoryview:
        if flags & PADDED:
            if not payload:
                raise ConnectionError_(PROTOCOL_ERROR, "padding without its length")
            pad = payload[0]
            if pad >= len(payload):
                raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
            return payload[1 : len(payload) - pad]
        return payload

    def _data(self, sid: int, flags: int, payload: memoryview) -> None:
        if sid == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.recv_unreturned += size  # every byte counts against the connection's window
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.last_id:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we closed: its bytes are dropped (and its window credited)
        if stream.remote_closed:
            self._reset(stream, STREAM_CLOSED, "DATA after END_STREAM")
            return
        data = self._unpad(flags, payload)
        if data:
            stream.held += len(data)
            if not (flags & END_STREAM):
                if stream.held <= self.hold_limit:
                    stream.owed += size
                    if stream.owed >= STREAM_WINDOW // 4:
                        self.window_update(sid, stream.owed)
                        stream.owed = 0
                else:
                    stream.owed += size
            self._messages(stream, data)
        if flags & END_STREAM:
            stream.remote_closed = True
            stream._wake()

    def _messages(self, stream: Stream, data: memoryview) -> None:
        """Moves the stream's messages to its inbox as they complete. Each message's bytes are
        copied once, from the frames into a ``bytearray`` the handler gets as it is
        (protobuf parses it as it would ``bytes``)."""
        while data and not stream.closed:
            body = stream.body
            if body is None:  # the 5-byte prefix: the compressed flag and the length
                rx = stream.rx
                if not rx and len(data) >= 5:
                    prefix: bytes | memoryview = data[:5]
                    data = data[5:]
                else:  # a prefix split over frames
                    need = 5 - len(rx)
                    rx += data[:need]
                    data = data[need:]
                    if len(rx) < 5:
                        return
                    prefix = bytes(rx)
                    rx.clear()
                length = int.from_bytes(prefix[1:5], "big")
                stream.compressed = prefix[0]
                if length > self.limits.message_bytes:
                    self.refuse(
                        stream,
                        8,  # RESOURCE_EXHAUSTED
                        # grpcio's words, which clients may look for.
                        f"Received message larger than max ({length} vs. "
                        f"{self.limits.message_bytes}): SERVE_GRPC_MAX_MESSAGE_BYTES",
                    )
                    return
                if len(data) >= length:  # the whole message in this frame
                    message: bytes | bytearray = bytes(data[:length])
                    data = data[length:]
                    self._deliver(stream, message, length)
                    continue
                # Grown as the bytes come, not allocated at the announced length: a prefix
                # alone must not make the server hold the message's size.
                stream.body = body = bytearray()
                stream.expected = length
            take = min(len(data), stream.expected - len(body))
            body += data[:take]
            data = data[take:]
            if len(body) == stream.expected:
                stream.body = None
                self._deliver(stream, body, len(body))

    def _deliver(self, stream: Stream, message: bytes | bytearray, length: int) -> None:
        if stream.compressed:
            try:
                message = self._decompress(stream, bytes(message))
            except ValueError as exc:
                self.refuse(stream, exc.args[0], exc.args[1])
                return
        stream.held += len(message) - length  # what the handler will take
        stream.inbox.append(message)
        stream._wake()

    def _decompress(self, stream: Stream, message: bytes) -> bytes:
        encoding = stream.encoding
        if encoding in (b"", b"identity"):
            raise ValueError(13, "a compressed message without grpc-encoding")  # INTERNAL
        if encoding not in (b"gzip", b"deflate"):
            raise ValueError(12, f"grpc-encoding {encoding.decode('latin-1')!r} is not supported")
        inflater = zlib.decompressobj(
            16 + zlib.MAX_WBITS if encoding == b"gzip" else zlib.MAX_WBITS
        )
        try:
            out = inflater.decompress(message, self.limits.message_bytes + 1)
        except zlib.error:
            raise ValueError(13, "the message does not decompress") from None
        if len(out) > self.limits.message_bytes or inflater.unconsumed_tail:
            raise ValueError(
                8,
                f"the decompressed request message is over {self.limits.message_bytes} bytes "
                "(SERVE_GRPC_MAX_MESSAGE_BYTES)",
            )
        return out

    def _headers(self, sid: int, flags: int, payload: memoryview) -> None:
        if sid == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            block = block[5:]
        if flags & END_HEADERS:
            self._header_block(sid, bytes(block), bool(flags & END_STREAM))
            return
        self.block = bytearray(block)
        self.block_stream = sid
        self.block_end = bool(flags & END_STREAM)

    def _continuation(self, sid: int, flags: int, payload: memoryview) -> None:
        if self.block is None or sid != self.block_stream:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        self.block += payload
        if len(self.block) > self.block_limit:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            block, self.block = bytes(self.block), None
            self._header_block(sid, block, self.block_end)

    def _header_block(self, sid: int, block: bytes, end_stream: bool) -> None:
        try:  # decoded whatever becomes of the stream: the decoder's table is the connection's
            headers = self._decode(block)
        except Exception as exc:  # hpack's errors: the connection's state is lost
            raise ConnectionError_(COMPRESSION_ERROR, f"header block: {exc}") from None
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client: gRPC sends none, but allows END_STREAM
            if not end_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "a second HEADERS without END_STREAM")
            stream.remote_closed = True
            stream._wake()
            return
        if sid % 2 == 0 or sid <= self.last_id:
            raise ConnectionError_(PROTOCOL_ERROR, f"stream {sid} cannot be opened")
        self.last_id = sid
        if self.going_away:
            self.transport.write(frame(RST_STREAM, 0, sid, _ID.pack(REFUSED_STREAM)))
            return
        if len(self.streams) >= self.limits.max_streams or self._resets_left() < 0:
            self.transport.write(frame(RST_STREAM, 0, sid, _ID.pack(REFUSED_STREAM)))
            return
        status = _not_grpc(headers)
        if status:  # an HTTP status alone, as the gRPC spec asks of a server
            answer = frame(HEADERS, END_HEADERS | END_STREAM, sid, b"\x08\x03" + status)
            if not end_stream:
                answer += frame(RST_STREAM, 0, sid, _ID.pack(NO_ERROR))
            self.write(answer)
            return
        stream = Stream(self, sid, headers)
        stream.remote_closed = end_stream
        self.streams[sid] = stream
        self.idle_since = None
        size = 0
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name == b":path":
                stream.path = value
            elif name == b"grpc-timeout":
                timeout = parse_timeout(value)
                if timeout is not None:
                    stream.deadline = self.loop.time() + timeout
                    stream.timer = self.loop.call_later(timeout, self._expire, stream)
            elif name == b"grpc-encoding":
                stream.encoding = value
        if size > 2 * self.limits.metadata_bytes:
            self.refuse(
                stream,
                8,  # RESOURCE_EXHAUSTED
                f"received metadata size exceeds the limit ({size} vs. "
                f"{2 * self.limits.metadata_bytes} bytes; SERVE_GRPC_MAX_METADATA_BYTES)",
            )
            return
        stream.task = self.dispatch(stream)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """A header block's fields. A client that repeats its headers call after call (grpcio,
        grpc-go and nghttp2 index every field they can after the first call) sends a block
        of one byte per field, each an index into the static or the connection's dynamic
        table; those are looked up here, for what ``hpack``'s decoder spends ~35 µs on. Such
        a block leaves the tables as they are."""
        if all(0x80 < b < 0xFF for b in block):
            table = self.decoder.header_table
            return [table.get_by_index(b & 0x7F) for b in block]
        return self.decoder.decode(block, raw=True)  # type: ignore[return-value]

    def _settings(self, sid: int, flags: int, payload: memoryview) -> None:
        if sid != 0:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if len(payload):
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if not self.settled:
                self.settled = True
                self.handshake.cancel()
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS of a partial entry")
        for at in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, at)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE")
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == S_MAX_FRAME_SIZE:
                if not MAX_FRAME <= value <= (1 << 24) - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE")
                self.peer_frame = value
        self.transport.write(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _window_update(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = _ID.unpack_from(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "the connection window overflowed")
            self._flush_blocked()
            return
        stream = self.streams.get(sid)
        if stream is None:
            return
        if increment == 0:
            self._reset(stream, PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR, "the stream window overflowed")
            return
        self.flush_stream(stream)

    def _ping(self, sid: int, flags: int, payload: memoryview) -> None:
        if sid != 0 or len(payload) != 8:
            raise ConnectionError_(PROTOCOL_ERROR, "a malformed PING")
        if flags & ACK:
            self.ping_sent = None
            return
        now = time.monotonic()
        if now - self.ping_last < PING_INTERVAL_S:
            self.ping_strikes += 1
            if self.ping_strikes > PING_STRIKES:
                raise ConnectionError_(ENHANCE_YOUR_CALM, "too_many_pings")
        self.ping_last = now
        self.transport.write(frame(PING, ACK, 0, bytes(payload)))

    def _rst_stream(self, sid: int, payload: memoryview) -> None:
        if sid == 0 or len(payload) != 4:
            raise ConnectionError_(PROTOCOL_ERROR, "a malformed RST_STREAM")
        if sid > self.last_id:
            raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self.streams.get(sid)
        if stream is not None:
            self._resets_left(spend=1)
            self._end_stream(stream, "the client cancelled the call")

    def _resets_left(self, spend: int = 0) -> float:
        """The reset budget (a token bucket of :data:`RESETS_PER_S`), less ``spend``."""
        now = reset_clock()
        refill = (now - self.reset_at) * RESETS_PER_S
        budget = min(float(RESETS_PER_S), self.reset_budget + refill) - spend
        # In debt at most a second's worth: a flood is refused for a second after it stops.
        self.reset_budget = max(budget, -float(RESETS_PER_S))
        self.reset_at = now
        return self.reset_budget

    def _goaway(self, sid: int) -> None:
        if sid != 0:
            raise ConnectionError_(PROTOCOL_ERROR, "GOAWAY on a stream")
        self.going_away = True  # the client opens no more; the calls in flight finish
        self._close_if_done()

    # -- frames out ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.ping_strikes = 0  # an answer of ours: the client's next ping is welcome
            self.transport.write(data)

    def window_update(self, sid: int, increment: int) -> None:
        if not self.closed:
            self.transport.write(frame(WINDOW_UPDATE, 0, sid, _ID.pack(increment)))

    def flush_stream(self, stream: Stream) -> None:
        """Sends what the windows let through of the stream's waiting DATA, and its trailers
        once nothing is left before them."""
        if stream.closed:
            return
        out = []
        while stream.out:
            room = min(stream.send_window, self.send_window, self.peer_frame)
            if room <= 0:
                self.blocked[stream.id] = stream
                break
            chunk = stream.out[0]
            if len(chunk) > room:
                stream.out[0] = chunk[room:]
                chunk = chunk[:room]
            else:
                stream.out.popleft()
            stream.send_window -= len(chunk)
            self.send_window -= len(chunk)
            stream.out_bytes -= len(chunk)
            out.append(frame(DATA, 0, stream.id, chunk))
        if not stream.out:
            self.blocked.pop(stream.id, None)
            if stream.writable is not None and not stream.writable.done():
                stream.writable.set_result(None)
            if stream.out_end is not None:
                out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, stream.out_end))
                stream.closed = True
                if not stream.remote_closed:
                    # The call is over: the client need not send the rest (RFC 9113, 8.1).
                    out.append(frame(RST_STREAM, 0, stream.id, _ID.pack(NO_ERROR)))
        if out:
            self.write(b"".join(out))
        if stream.closed:
            self.forget(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            self.flush_stream(stream)

    def refuse(self, stream: Stream, code: int, message: str) -> None:
        """Ends a call with a status from the transport (its handler, if any, is cancelled);
        answers still waiting for windows, and the status after them, are dropped."""
        stream.out.clear()
        stream.out_bytes = 0
        stream.out_end = None
        stream.finish(code, message)
        self._end_stream(stream, message)

    def _reset(self, stream: Stream, code: int, why: str) -> None:
        if not stream.closed:
            self.write(frame(RST_STREAM, 0, stream.id, _ID.pack(code)))
        self._end_stream(stream, why)

    def _end_stream(self, stream: Stream, why: str) -> None:
        """The stream is over for the handler too: its reads and writes raise, its task is
        cancelled."""
        stream.error = why
        stream.closed = True
        stream._wake()
        if stream.writable is not None and not stream.writable.done():
            stream.writable.set_result(None)
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        self.forget(stream)

    def forget(self, stream: Stream) -> None:
        stream.cancel_timer()
        self.blocked.pop(stream.id, None)
        if self.streams.pop(stream.id, None) is not None:
            if not self.streams:
                self.idle_since = time.monotonic()
            self._close_if_done()

    def _expire(self, stream: Stream) -> None:
        """The client's deadline passed: the call ends DEADLINE_EXCEEDED."""
        stream.timer = None
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        self.refuse(stream, 4, "Deadline Exceeded")

    # -- the connection's life ---------------------------------------------------------------

    def goaway(self) -> None:
        """The drain: no new streams; the connection closes once its calls are done."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self.transport.write(frame(GOAWAY, 0, 0, _ID.pack(self.last_id) + _ID.pack(NO_ERROR)))
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.going_away and not self.streams and not self.closed:
            self._shut()

    def _shut(self) -> None:
        """Closes the connection lingering: our side is shut for writing (so what we wrote,
        GOAWAY last, reaches the peer), and what the peer still sends is read and dropped for
        up to :data:`LINGER_S`. Closing with its bytes unread would make the kernel reset the
        connection, and the peer could lose the GOAWAY that says why."""
        self.closed = True
        for stream in list(self.streams.values()):
            self._end_stream(stream, "the connection closed")
        transport = self.transport
        try:
            transport.write_eof()
        except (OSError, NotImplementedError, RuntimeError):  # the peer is gone already
            transport.close()
            return
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        self.loop.call_later(LINGER_S, transport.close)

    def abort(self, code: int, debug: str) -> None:
        """A connection error: GOAWAY with its code, the connection closed."""
        if self.transport is None or self.transport.is_closing() or self.closed:
            return
        log.debug("HTTP/2 connection error %d: %s", code, debug)
        self.transport.write(
            frame(GOAWAY, 0, 0, _ID.pack(self.last_id) + _ID.pack(code) + debug.encode()[:256])
        )
        self._shut()

    def close(self) -> None:
        """Closed at once (the end of the graceful timeout): the calls left are cancelled."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _handshake_expired(self) -> None:
        if not self.settled:
            self.abort(PROTOCOL_ERROR, "the SETTINGS were not acknowledged in time")

    def _schedule_tick(self) -> None:
        self.timer = self.loop.call_later(1.0, self._tick)

    def _tick(self) -> None:
        """Once a second: idle connections closed, silent ones pinged, dead ones dropped."""
        if self.closed:
            return
        now = time.monotonic()
        if self.idle_since is not None and now - self.idle_since > self.limits.idle_s:
            self.going_away = True
            self.abort(NO_ERROR, "max_idle")
            return
        if self.ping_sent is not None:
            if now - self.ping_sent > self.limits.ping_timeout_s:
                self.abort(NO_ERROR, "keepalive_timeout")
                return
        elif now - self.last_received > self.limits.keepalive_s:
            self.ping_sent = now
            self.last_received = now
            self.transport.write(frame(PING, 0, 0, b"\0" * 8))
        self._schedule_tick()
