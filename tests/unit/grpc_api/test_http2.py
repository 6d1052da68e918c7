"""The native gRPC server's HTTP/2 transport (``service/grpc/http2.py``, ``native.py``), in
process: a real :class:`NativeServer` on a loopback port, on an event loop of its own thread,
with fake handlers (bytes in, bytes out; no model) behind each route.

The clients are the ``h2`` library (``tests/support/h2raw.py``) for well-behaved calls and flow
control, ``grpcio`` for one end-to-end check, and :class:`Wire`, frames written by hand and
read back one by one, for what ``h2`` will not write or hides: CONTINUATION, padding, streams
after GOAWAY, protocol errors, the exact frames of an answer.

What is checked: unary and streaming calls and their statuses, the flow control of answers,
CONTINUATION and padding, deadlines, resets, unknown methods, the message and metadata limits,
compression, the concurrent-stream limit, PING and ping floods, the SETTINGS handshake, idle
connections, the drain, metadata as handlers see it, and connection errors.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import gzip
import socket
import struct
import threading
import time
import types
import urllib.parse
import zlib
from dataclasses import dataclass, field

import grpc
import h2.events
import h2.settings
import hpack
import pytest

from service.grpc import http2
from service.grpc.gate import Route
from service.grpc.http2 import Limits
from service.grpc.native import NativeServer
from tests.support.h2raw import Answer, RawH2, frame, grpc_frame

pytestmark = pytest.mark.timeout(60)

# RFC 9113 numbers, written out here rather than taken from the module under test.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0, 1, 6, 7, 8
ENHANCE_YOUR_CALM = 11
RESETS_PER_S = 200  # the server's reset budget (http2.RESETS_PER_S)
S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE = 3, 4

MESSAGE_BYTES = 32 * 1024
METADATA_BYTES = 1024
MAX_STREAMS = 4
LIMITS = {
    "max_streams": MAX_STREAMS,
    "message_bytes": MESSAGE_BYTES,
    "metadata_bytes": METADATA_BYTES,
    "idle_s": 60.0,
    "keepalive_s": 60.0,
    "handshake_s": 5.0,
}

ECHO, BIG, SLOW, HELD = "/t.T/Echo", "/t.T/Big", "/t.T/Slow", "/t.T/Held"
ABORT, STREAM, STREAM_ABORT = "/t.T/Abort", "/t.T/Stream", "/t.T/StreamAbort"


def eventually(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.005)


# -- the server ------------------------------------------------------------------------------


class Handlers:
    """The fake calls behind the routes; what they saw, for the test's thread to read."""

    def __init__(self):
        self.seen: list[bytes | None] = []
        self.metadata: list[tuple] = []
        self.remaining: list[float | None] = []
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.release = threading.Event()

    def routes(self) -> dict[bytes, Route]:
        def unary(name, fn):
            return Route(name, types.SimpleNamespace(unary=fn), False, _identity)

        def streaming(name, fn):
            return Route(name, types.SimpleNamespace(streaming=fn), True, _identity)

        return {
            ECHO.encode(): unary("Echo", self.echo),
            BIG.encode(): unary("Big", self.big),
            SLOW.encode(): unary("Slow", self.slow),
            HELD.encode(): unary("Held", self.held),
            ABORT.encode(): unary("Abort", self.abort),
            STREAM.encode(): streaming("Stream", self.stream),
            STREAM_ABORT.encode(): streaming("StreamAbort", self.stream_abort),
        }

    async def echo(self, requests, context):
        message = await context.read_within(5.0)
        self.seen.append(message)
        self.metadata.append(context.invocation_metadata())
        self.remaining.append(context.time_remaining())
        return b"echo:" + (message or b"")

    async def big(self, requests, context):
        """An answer of the size the request names."""
        return pattern(int(await context.read_within(5.0)))

    async def slow(self, requests, context):
        self.started.append("slow")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.append("slow")
            raise
        return b"late"

    async def held(self, requests, context):
        """Answers once the test sets ``release``."""
        message = await context.read_within(5.0)
        self.started.append("held")
        try:
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled.append("held")
            raise
        return b"released:" + message

    async def abort(self, requests, context):
        message = await context.read_within(5.0)
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, message.decode(), (("x-error-code", "bad"),)
        )

    async def stream(self, requests, context):
        while (message := await context.read_within(5.0)) is not None:
            yield b"re:" + message

    async def stream_abort(self, requests, context):
        yield b"first"
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "msg", (("x-error-code", "bad"),))


def _identity(answer: bytes) -> bytes:
    return answer


def pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


class Harness:
    """A NativeServer with the fake routes on 127.0.0.1, its loop running in a thread."""

    def __init__(self, **limits):
        self.handlers = Handlers()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="h2-test", daemon=True)
        self.thread.start()
        self.limits = Limits(**{**LIMITS, **limits})

        async def start() -> NativeServer:
            server = NativeServer(self.handlers.routes(), self.limits, "127.0.0.1", 0)
            await server.start()
            return server

        self.server = self.run(start())
        self.port = self.server.port
        self.address = f"127.0.0.1:{self.port}"

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro, timeout_s: float = 10.0):
        return self.submit(coro).result(timeout_s)

    def close(self) -> None:
        async def shut() -> None:
            await self.server.stop(0)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2)

        try:
            self.run(shut())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            if not self.thread.is_alive():
                self.loop.close()


@pytest.fixture
def serve():
    made: list[Harness] = []

    def make(**limits) -> Harness:
        made.append(Harness(**limits))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def server(serve) -> Harness:
    return serve()


# -- a client of hand-written frames ---------------------------------------------------------


def message(payload: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(payload)) + payload


def split_messages(data: bytes) -> list[bytes]:
    out = []
    while data:
        (length,) = struct.unpack(">I", data[1:5])
        out.append(data[5 : 5 + length])
        data = data[5 + length :]
    return out


def request_headers(path: str, extra=()) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


@dataclass
class Frame:
    kind: int
    flags: int
    sid: int
    payload: bytes


@dataclass
class Reply:
    """What came back on one stream."""

    blocks: list[dict[str, str]] = field(default_factory=list)  # header blocks, in order
    data: bytes = b""
    ended: bool = False
    reset: int | None = None

    @property
    def trailers(self) -> dict[str, str]:
        return self.blocks[-1] if self.blocks else {}

    @property
    def status(self) -> int | None:
        status = self.trailers.get("grpc-status")
        return None if status is None else int(status)

    @property
    def message(self) -> str:
        return urllib.parse.unquote(self.trailers.get("grpc-message", ""))

    @property
    def messages(self) -> list[bytes]:
        return split_messages(self.data)


class Wire:
    """One HTTP/2 connection whose frames are written by hand and read back one by one.

    It writes the preface and its SETTINGS (``settings``: (identifier, value) pairs) unless
    ``preface`` is false, answers the server's SETTINGS unless ``ack_settings`` is false, and
    returns the windows of the DATA it reads unless ``return_windows`` is false. Every read
    is bounded in time.
    """

    def __init__(
        self,
        port: int,
        settings=(),
        ack_settings: bool = True,
        return_windows: bool = True,
        preface: bool = True,
    ):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.ack_settings = ack_settings
        self.return_windows = return_windows
        self.buffer = b""
        self.eof = False
        self.replies: dict[int, Reply] = collections.defaultdict(Reply)
        self.settings: dict[int, int] = {}
        self.settings_acked = False
        self.pongs: list[bytes] = []
        self.goaway: tuple[int, int, bytes] | None = None  # last stream, code, debug data
        self.next_id = 1
        if preface:
            entries = b"".join(struct.pack(">HI", k, v) for k, v in settings)
            self.send(PREFACE + frame(SETTINGS, 0, 0, entries))

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    # -- writing

    def send(self, *data: bytes) -> None:
        self.sock.sendall(b"".join(data))

    def _quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def block(self, headers) -> bytes:
        return self.encoder.encode(headers, huffman=False)

    def open(self, path: str, extra=(), end_stream: bool = False) -> int:
        sid = self.next_id
        self.next_id += 2
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        self.send(frame(HEADERS, flags, sid, self.block(request_headers(path, extra))))
        return sid

    def data(self, sid: int, data: bytes, end: bool = True, chunk: int = 16_384) -> None:
        frames = [data[at : at + chunk] for at in range(0, len(data), chunk)] or [b""]
        for i, part in enumerate(frames):
            last = i == len(frames) - 1
            self.send(frame(DATA, END_STREAM if end and last else 0, sid, part))

    def call(self, path: str, payload: bytes | None = b"", extra=(), end: bool = True) -> int:
        """A stream for ``path`` with ``payload`` as its one message (None: no message)."""
        sid = self.open(path, extra, end_stream=payload is None and end)
        if payload is not None:
            self.data(sid, message(payload), end)
        return sid

    # -- reading

    def read(self, timeout_s: float = 5.0) -> Frame | None:
        """The next frame; None once the server closed the connection. ``TimeoutError``
        when none comes within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            if len(self.buffer) >= 9:
                size = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + size:
                    b = self.buffer
                    got = Frame(
                        b[3], b[4], int.from_bytes(b[5:9], "big") & 0x7FFFFFFF, b[9 : 9 + size]
                    )
                    self.buffer = b[9 + size :]
                    self._handle(got)
                    return got
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no frame within {timeout_s} s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self.buffer += data

    def _handle(self, got: Frame) -> None:
        reply = self.replies[got.sid] if got.sid else None
        if got.kind == HEADERS:
            reply.blocks.append(dict(self.decoder.decode(got.payload)))
            reply.ended |= bool(got.flags & END_STREAM)
        elif got.kind == DATA:
            reply.data += got.payload
            reply.ended |= bool(got.flags & END_STREAM)
            if got.payload and self.return_windows:
                n = struct.pack(">I", len(got.payload))
                self._quietly(frame(WINDOW_UPDATE, 0, 0, n) + frame(WINDOW_UPDATE, 0, got.sid, n))
        elif got.kind == RST_STREAM:
            reply.reset = struct.unpack(">I", got.payload)[0]
            reply.ended = True
        elif got.kind == SETTINGS:
            if got.flags & ACK:
                self.settings_acked = True
            else:
                for at in range(0, len(got.payload), 6):
                    key, value = struct.unpack_from(">HI", got.payload, at)
                    self.settings[key] = value
                if self.ack_settings:
                    self._quietly(frame(SETTINGS, ACK, 0, b""))
        elif got.kind == PING and got.flags & ACK:
            self.pongs.append(got.payload)
        elif got.kind == GOAWAY:
            last, code = struct.unpack(">II", got.payload[:8])
            self.goaway = (last & 0x7FFFFFFF, code, got.payload[8:])

    def read_until(self, predicate, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            got = self.read(max(deadline - time.monotonic(), 0.001))
            assert got is not None, "the connection closed first"

    def settle(self) -> None:
        """The handshake done: the server's SETTINGS read (and acknowledged), ours acked."""
        self.read_until(lambda: self.settings and self.settings_acked)

    def answer(self, sid: int, timeout_s: float = 5.0) -> Reply:
        """The stream's reply once it ended (or what came before the connection closed)."""
        deadline = time.monotonic() + timeout_s
        while not self.replies[sid].ended:
            if self.read(max(deadline - time.monotonic(), 0.001)) is None:
                break
        return self.replies[sid]

    def closed(self, timeout_s: float = 5.0) -> list[Frame]:
        """Reads until the server closes the connection; the frames that came before."""
        deadline = time.monotonic() + timeout_s
        frames = []
        while (got := self.read(max(deadline - time.monotonic(), 0.001))) is not None:
            frames.append(got)
        return frames

    def quiet(self, seconds: float) -> list[Frame]:
        """The frames that come within ``seconds`` (the connection staying open)."""
        deadline = time.monotonic() + seconds
        frames = []
        with contextlib.suppress(TimeoutError):
            while (remaining := deadline - time.monotonic()) > 0:
                got = self.read(remaining)
                assert got is not None, "the connection closed"
                frames.append(got)
        return frames


# -- h2 helpers ------------------------------------------------------------------------------


def record_events(client: RawH2) -> list:
    """Every h2 event the client receives, in order."""
    events: list = []
    receive = client.conn.receive_data

    def receive_data(data):
        new = receive(data)
        events.extend(new)
        return new

    client.conn.receive_data = receive_data
    return events


def pump_until(client: RawH2, predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        if not client.pump(min(deadline, time.monotonic() + 0.05)):
            assert predicate(), "the connection closed first"
            return


def pump_for(client: RawH2, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and client.pump(deadline):
        pass


# -- calls -----------------------------------------------------------------------------------


def test_unary_call_answers_its_message_and_status_ok(server):
    with RawH2(server.address) as client:
        sid = client.call(ECHO, grpc_frame(b"hello"))
        answer = client.wait(sid, timeout_s=5)
    assert answer.ended and answer.reset is None
    assert answer.headers[":status"] == "200"
    assert answer.headers["content-type"] == "application/grpc"
    assert answer.data == grpc_frame(b"echo:hello")
    assert answer.grpc_status == 0
    assert server.handlers.seen == [b"hello"]


def test_unary_answer_before_the_client_ends_its_side_resets_it_no_error(server):
    """The call is over once answered: the client's side is closed with RST_STREAM
    NO_ERROR after the trailers (RFC 9113, 8.1)."""
    with Wire(server.port) as wire:
        sid = wire.call(ECHO, b"early", end=False)
        reply = wire.answer(sid)
        assert reply.status == 0 and reply.messages == [b"echo:early"]
        wire.read_until(lambda: reply.reset is not None)
    assert reply.reset == NO_ERROR


def test_frames_split_across_reads(server):
    """The preface and every frame of a call arrive a few bytes at a time."""
    with Wire(server.port, preface=False) as wire:
        data = (
            PREFACE
            + frame(SETTINGS, 0, 0, b"")
            + frame(HEADERS, END_HEADERS, 1, wire.block(request_headers(ECHO)))
            + frame(DATA, END_STREAM, 1, message(b"in pieces"))
        )
        for at in range(0, len(data), 11):
            wire.send(data[at : at + 11])
            time.sleep(0.001)
        reply = wire.answer(1)
    assert reply.status == 0, reply
    assert reply.messages == [b"echo:in pieces"]


def test_grpcio_client(server):
    """grpcio's own client against the transport: a unary call (plain and gzip-compressed,
    with metadata), a stream-stream call, and an aborted call's status and trailers."""
    with grpc.insecure_channel(server.address) as channel:
        echo = channel.unary_unary(ECHO)
        metadata = (("x-custom", "v"), ("x-data-bin", b"\x00\xff"))
        assert echo(b"hi", timeout=5, metadata=metadata) == b"echo:hi"
        assert ("x-custom", "v") in server.handlers.metadata[-1]
        assert ("x-data-bin", b"\x00\xff") in server.handlers.metadata[-1]
        payload = b"z" * 5000
        assert echo(payload, timeout=5, compression=grpc.Compression.Gzip) == b"echo:" + payload
        assert server.handlers.seen[-1] == payload

        stream = channel.stream_stream(STREAM)
        answers = list(stream(iter([b"a", b"b", b"c"]), timeout=5))
        assert answers == [b"re:a", b"re:b", b"re:c"]

        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(ABORT)("naïve ✓ 100%".encode(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "naïve ✓ 100%"
    assert ("x-error-code", "bad") in info.value.trailing_metadata()


def test_answer_waits_for_the_clients_flow_control_windows(server):
    """A 100 kB answer to a client whose stream window is 1000 bytes: 1000 bytes come, then
    nothing until the stream's window opens; then up to the connection's window (65535),
    then nothing until that opens; then the rest, in frames no larger than 16384 bytes."""
    size = 100_000
    with RawH2(server.address) as client:
        events = record_events(client)
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
        client.conn.acknowledge_received_data = lambda *args, **kwargs: None  # no updates
        sid = client.call(BIG, grpc_frame(str(size).encode()))
        answer = client.answers[sid]

        pump_until(client, lambda: len(answer.data) >= 1000)
        pump_for(client, 0.3)
        assert len(answer.data) == 1000 and not answer.ended

        client.conn.increment_flow_control_window(1_000_000, stream_id=sid)
        client.flush()
        pump_until(client, lambda: len(answer.data) >= 65_535)
        pump_for(client, 0.3)
        assert len(answer.data) == 65_535 and not answer.ended

        client.conn.increment_flow_control_window(1_000_000)
        client.flush()
        pump_until(client, lambda: answer.ended)
    assert answer.data == grpc_frame(pattern(size))
    assert answer.grpc_status == 0
    sizes = [len(e.data) for e in events if isinstance(e, h2.events.DataReceived)]
    assert max(sizes) == 16_384  # the peer's SETTINGS_MAX_FRAME_SIZE (the default)


def test_deadline_while_the_answer_waits_for_the_clients_window_ends_the_stream(server):
    """The answer (100 kB) is held back by a 1000-byte window the client never opens; at
    the deadline the stream must still end, with DEADLINE_EXCEEDED trailers (HEADERS are not
    flow-controlled) or an RST_STREAM."""
    settings = [(S_INITIAL_WINDOW_SIZE, 1000)]
    with Wire(server.port, settings=settings, return_windows=False) as wire:
        sid = wire.call(BIG, b"100000", extra=[("grpc-timeout", "300m")])
        reply = wire.replies[sid]
        with contextlib.suppress(TimeoutError):
            wire.read_until(lambda: reply.ended, timeout_s=1.5)
    assert len(reply.data) == 1000
    assert reply.ended, "the stream was left open"
    deadline_exceeded = reply.status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert deadline_exceeded or reply.reset not in (None, NO_ERROR), reply


def test_request_in_padded_data_frames_and_continuation_split_headers(server):
    """A header block in a padded HEADERS (with priority fields) and two CONTINUATIONs; the
    message over 80 DATA frames, every other one padded."""
    payload = pattern(8000)
    with Wire(server.port) as wire:
        block = wire.block(request_headers(ECHO))
        assert len(block) > 40
        pad = 9
        first = bytes((pad,)) + struct.pack(">IB", 0, 15) + block[:20] + b"\0" * pad
        framed = message(payload)
        datas = []
        for i, at in enumerate(range(0, len(framed), 101)):
            part = framed[at : at + 101]
            flags = END_STREAM if at + 101 >= len(framed) else 0
            if i % 2:
                datas.append(frame(DATA, flags | PADDED, 1, bytes((7,)) + part + b"\0" * 7))
            else:
                datas.append(frame(DATA, flags, 1, part))
        assert len(datas) == 80
        wire.send(
            frame(HEADERS, PADDED | PRIORITY_FLAG, 1, first),
            frame(CONTINUATION, 0, 1, block[20:40]),
            frame(CONTINUATION, END_HEADERS, 1, block[40:]),
            *datas,
        )
        reply = wire.answer(1)
    assert reply.status == 0, reply
    assert reply.messages == [b"echo:" + payload]
    assert server.handlers.seen == [payload]


def test_grpc_timeout_ends_the_call_deadline_exceeded_and_cancels_the_handler(server):
    with Wire(server.port) as wire:
        start = time.monotonic()
        sid = wire.call(SLOW, b"", extra=[("grpc-timeout", "300m")])
        reply = wire.answer(sid)
        elapsed = time.monotonic() - start
    assert reply.status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], reply
    assert 0.25 <= elapsed < 4
    eventually(lambda: server.handlers.cancelled == ["slow"])


def test_client_reset_cancels_the_handler(server):
    with Wire(server.port) as wire:
        sid = wire.call(SLOW, b"")
        eventually(lambda: server.handlers.started == ["slow"])
        wire.send(frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)))
        eventually(lambda: server.handlers.cancelled == ["slow"])
        # Nothing is answered on the reset stream; the connection serves the next call.
        after = wire.call(ECHO, b"next")
        assert wire.answer(after).status == 0
        assert not wire.replies[sid].blocks and not wire.replies[sid].data


def test_unknown_method_is_unimplemented_trailers_only(server):
    with Wire(server.port) as wire:
        sid = wire.call("/t.T/Nope", b"x")
        reply = wire.answer(sid)
    assert reply.ended and not reply.data
    assert len(reply.blocks) == 1  # one HEADERS with END_STREAM: trailers only
    assert reply.blocks[0][":status"] == "200"
    assert reply.status == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "/t.T/Nope" in reply.message


# -- limits ----------------------------------------------------------------------------------


def test_message_over_the_limit_is_resource_exhausted_and_the_connection_lives_on(server):
    """Refused on its declared length, before its bytes come; one at the limit passes."""
    with Wire(server.port) as wire:
        sid = wire.open(ECHO)
        wire.send(frame(DATA, 0, sid, struct.pack(">BI", 0, MESSAGE_BYTES + 1) + b"x" * 10))
        reply = wire.answer(sid)
        assert reply.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], reply
        assert "larger than max" in reply.message
        assert not reply.data

        at_limit = pattern(MESSAGE_BYTES)
        reply = wire.answer(wire.call(ECHO, at_limit))
    assert reply.status == 0, reply
    assert reply.messages == [b"echo:" + at_limit]
    assert server.handlers.seen == [at_limit]


@pytest.mark.parametrize(
    "encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_compressed_request_is_decompressed_for_the_handler(server, encoding, compress):
    payload = b"compress me " * 200
    with Wire(server.port) as wire:
        sid = wire.open(ECHO, extra=[("grpc-encoding", encoding)])
        wire.data(sid, message(compress(payload), compressed=True))
        reply = wire.answer(sid)
    assert reply.status == 0, reply
    assert server.handlers.seen == [payload]


@pytest.mark.parametrize(
    "extra, status, words",
    [
        ([("grpc-encoding", "snappy")], 12, "snappy"),  # UNIMPLEMENTED
        ([], 13, "without grpc-encoding"),  # INTERNAL: compressed, but with what?
    ],
    ids=["unsupported-encoding", "no-encoding"],
)
def test_compressed_request_in_an_encoding_not_supported(server, extra, status, words):
    with Wire(server.port) as wire:
        sid = wire.open(ECHO, extra=extra)
        wire.data(sid, message(gzip.compress(b"x"), compressed=True))
        reply = wire.answer(sid)
    assert reply.status == status, reply
    assert words in reply.message
    assert server.handlers.seen == []


def test_streams_past_the_limit_are_refused(server):
    """The fifth of five streams opened at once is refused (REFUSED_STREAM); once one of the
    four ends, a new stream is served."""
    with Wire(server.port) as wire:
        sids = [wire.call(SLOW, b"") for _ in range(MAX_STREAMS + 1)]
        reply = wire.answer(sids[-1])
        assert reply.reset == REFUSED_STREAM and not reply.blocks
        assert wire.settings[S_MAX_CONCURRENT_STREAMS] == MAX_STREAMS
        eventually(lambda: len(server.handlers.started) == MAX_STREAMS)

        wire.send(frame(RST_STREAM, 0, sids[0], struct.pack(">I", CANCEL)))
        eventually(lambda: server.handlers.cancelled == ["slow"])
        reply = wire.answer(wire.call(ECHO, b"room"))
    assert reply.status == 0, reply


def test_rapid_resets_refuse_new_streams_until_the_rate_falls(server, monkeypatch):
    """Calls opened and cancelled at once, past the reset budget (200, refilled at 200 a
    second, at most a second in debt): the connection's next stream is refused
    (REFUSED_STREAM, safe to retry), the connection stays open, and once the budget refills
    a stream is served again. The budget's clock stands still while the resets go, and then
    moves on by two seconds: how fast this machine sends them does not matter."""
    now = [1000.0]
    monkeypatch.setattr(http2, "reset_clock", lambda: now[0])
    with Wire(server.port) as wire:
        for _ in range(RESETS_PER_S + 1):
            sid = wire.call(SLOW, b"")
            wire.send(frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)))
        reply = wire.answer(wire.call(ECHO, b"too soon"))
        assert reply.reset == REFUSED_STREAM and not reply.blocks, reply
        now[0] += 2.0  # the debt repaid, the budget refilled
        reply = wire.answer(wire.call(ECHO, b"later"))
    assert reply.status == 0, reply
    assert server.handlers.seen == [b"later"]


@pytest.mark.parametrize(
    ("method", "content_type", "status"),
    [("GET", "application/grpc", "405"), ("POST", "application/json", "415")],
)
def test_a_request_that_is_not_a_grpc_call_gets_an_http_status(
    server, method, content_type, status
):
    """The gRPC spec's answer to what is not a gRPC call: an HTTP status, no grpc-status; the
    handler never runs."""
    with RawH2(f"127.0.0.1:{server.port}") as client:
        headers = [
            (":method", method),
            (":scheme", "http"),
            (":authority", client.authority),
            (":path", ECHO),
            ("content-type", content_type),
        ]
        sid = client.conn.get_next_available_stream_id()
        client.answers[sid] = Answer()
        client.conn.send_headers(sid, headers, end_stream=True)
        client.flush()
        answer = client.wait(sid, timeout_s=5)
    assert answer.headers.get(":status") == status, answer
    assert answer.grpc_status is None and answer.ended
    assert server.handlers.seen == []


def test_metadata_over_the_limit_is_resource_exhausted(server):
    """Past 2 * metadata_bytes (RFC 7541's size of the header list) the call is refused and
    its handler never runs."""
    with Wire(server.port) as wire:
        sid = wire.call(ECHO, b"x", extra=[("x-big", "a" * (2 * METADATA_BYTES))])
        reply = wire.answer(sid)
        assert reply.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], reply
        assert "metadata size exceeds" in reply.message
        # Under the limit, the same connection is served.
        reply = wire.answer(wire.call(ECHO, b"y", extra=[("x-small", "a" * 100)]))
    assert reply.status == 0, reply
    assert server.handlers.seen == [b"y"]


# -- PING, the handshake, idle connections ---------------------------------------------------


def settled(client: RawH2) -> list:
    """The client's events, once the server's SETTINGS are in and acknowledged and ours are
    acknowledged: what the client writes after this is what the test writes (a client still
    writing when the server closes gets a reset, which can drop the GOAWAY before it)."""
    events = record_events(client)

    def done() -> bool:
        kinds = {type(e) for e in events}
        return {h2.events.RemoteSettingsChanged, h2.events.SettingsAcknowledged} <= kinds

    pump_until(client, done)
    return events


def test_ping_is_acknowledged_with_its_payload(server):
    with RawH2(server.address) as client:
        events = settled(client)
        client.conn.ping(b"pingpong")
        client.flush()

        def acked():
            return [e.ping_data for e in events if isinstance(e, h2.events.PingAckReceived)]

        pump_until(client, acked)
        assert acked() == [b"pingpong"]
        assert client.goaway is None


def test_ping_flood_gets_goaway_enhance_your_calm(server):
    """Pings with no answer of the server's between them: the third past the first is one
    too many."""
    with RawH2(server.address) as client:
        settled(client)
        for i in range(10):
            client.conn.ping(b"%08d" % i)
        client.flush()
        pump_until(client, lambda: client.goaway is not None)
        assert client.goaway.error_code == ENHANCE_YOUR_CALM
        assert client.goaway.additional_data == b"too_many_pings"
        pump_until(client, lambda: client.closed)


def test_settings_not_acknowledged_in_time_close_the_connection(serve):
    server = serve(handshake_s=0.3)
    with Wire(server.port, ack_settings=False) as silent, Wire(server.port) as polite:
        polite.settle()
        start = time.monotonic()
        silent.closed(timeout_s=5)
        elapsed = time.monotonic() - start
        assert silent.goaway is not None and silent.goaway[1] == PROTOCOL_ERROR
        assert 0.2 <= elapsed < 4
        # The client that acknowledged them is served past the handshake's time.
        time.sleep(max(0.0, 0.4 - elapsed))
        assert polite.answer(polite.call(ECHO, b"x")).status == 0


def test_idle_connection_is_closed_with_goaway(serve):
    server = serve(idle_s=0.5)
    with Wire(server.port) as wire:
        start = time.monotonic()
        wire.settle()
        wire.closed(timeout_s=5)
        elapsed = time.monotonic() - start
    assert wire.goaway is not None
    assert wire.goaway[:2] == (0, NO_ERROR)
    assert wire.goaway[2] == b"max_idle"
    assert 0.5 <= elapsed < 4


def test_a_silent_connection_is_pinged_and_kept_while_it_answers(serve):
    server = serve(keepalive_s=0.5, ping_timeout_s=1.5)
    with Wire(server.port) as wire:
        wire.settle()
        pings = [f for f in wire.quiet(2.5) if f.kind == PING and not f.flags & ACK]
        assert pings, "no keep-alive ping on a silent connection"
        wire.send(frame(PING, ACK, 0, bytes(pings[0].payload)))
        # Answered: the connection stays (pinged again, and answered, while the test waits).
        for got in wire.quiet(2.5):
            assert got.kind != GOAWAY, got
            if got.kind == PING and not got.flags & ACK:
                wire.send(frame(PING, ACK, 0, bytes(got.payload)))
        assert not wire.eof


def test_a_peer_that_does_not_answer_the_ping_is_dropped(serve):
    server = serve(keepalive_s=0.5, ping_timeout_s=0.5)
    with Wire(server.port) as wire:
        wire.settle()
        start = time.monotonic()
        frames = wire.closed(timeout_s=6)
        elapsed = time.monotonic() - start
    assert any(f.kind == PING and not f.flags & ACK for f in frames)
    assert wire.goaway is not None and wire.goaway[2] == b"keepalive_timeout"
    assert 1.0 <= elapsed < 5


def test_connections_disable_nagles_algorithm(server):
    """Small frames (answers right after a WINDOW_UPDATE) go out at once: TCP_NODELAY is set
    on the server's side of each connection, as asyncio's own create_server(host, port)
    does."""
    with Wire(server.port) as wire:
        wire.settle()

        async def nodelay() -> list[int]:
            return [
                conn.transport.get_extra_info("socket").getsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY
                )
                for conn in server.server.connections
            ]

        assert server.run(nodelay()) == [1]


# -- the drain -------------------------------------------------------------------------------


def test_drain_lets_calls_in_flight_finish_and_refuses_new_streams(server):
    # No WINDOW_UPDATE written back as the answer comes: the server closes right after it.
    with Wire(server.port, return_windows=False) as wire:
        sid = wire.call(HELD, b"in flight")
        eventually(lambda: server.handlers.started == ["held"])
        start = time.monotonic()
        stopped = server.submit(server.server.stop(5.0))

        wire.read_until(lambda: wire.goaway is not None)
        assert wire.goaway[:2] == (sid, NO_ERROR)

        refused = wire.call(ECHO, b"too late")
        assert wire.answer(refused).reset == REFUSED_STREAM
        assert not stopped.done()

        server.handlers.release.set()
        reply = wire.answer(sid)
        assert reply.status == 0, reply
        assert reply.messages == [b"released:in flight"]
        wire.closed(timeout_s=5)
    stopped.result(5)
    assert time.monotonic() - start < 4  # closed once the call ended, not at the grace's end
    assert server.handlers.seen == []  # the refused stream never reached its handler


def test_drain_cancels_calls_still_running_after_the_grace(server):
    with Wire(server.port) as wire:
        sid = wire.call(SLOW, b"")
        eventually(lambda: server.handlers.started == ["slow"])
        start = time.monotonic()
        stopped = server.submit(server.server.stop(0.3))
        wire.closed(timeout_s=5)
        elapsed = time.monotonic() - start
        assert wire.goaway is not None and wire.goaway[:2] == (sid, NO_ERROR)
        assert 0.25 <= elapsed < 4
        stopped.result(5)
        eventually(lambda: server.handlers.cancelled == ["slow"])
        assert wire.replies[sid].status is None  # never answered


# -- streaming and statuses ------------------------------------------------------------------


def test_streaming_answers_in_order_then_status_ok(server):
    """Each answer is sent as its request comes, before the client ends its side."""
    with Wire(server.port) as wire:
        sid = wire.open(STREAM)
        reply = wire.replies[sid]
        for i, word in enumerate((b"one", b"two", b"three")):
            wire.data(sid, message(word), end=False)
            wire.read_until(lambda n=i + 1: len(reply.messages) == n)
        assert not reply.ended
        wire.data(sid, b"", end=True)
        wire.answer(sid)
    assert reply.messages == [b"re:one", b"re:two", b"re:three"]
    assert len(reply.blocks) == 2 and reply.blocks[0][":status"] == "200"
    assert reply.status == 0


@pytest.mark.parametrize("path, answers", [(ABORT, []), (STREAM_ABORT, [b"first"])])
def test_abort_sets_status_message_and_trailing_metadata(server, path, answers):
    with Wire(server.port) as wire:
        reply = wire.answer(wire.call(path, b"msg"))
    assert reply.status == grpc.StatusCode.INVALID_ARGUMENT.value[0], reply
    assert reply.trailers["grpc-message"] == "msg"
    assert reply.trailers["x-error-code"] == "bad"
    assert reply.messages == answers


def test_non_ascii_status_message_is_percent_encoded(server):
    text = "naïve ✓ 100%"
    with Wire(server.port) as wire:
        reply = wire.answer(wire.call(ABORT, text.encode()))
    assert reply.trailers["grpc-message"] == "na%C3%AFve %E2%9C%93 100%25"
    assert reply.message == text


def test_invocation_metadata_leaves_out_transport_fields_and_decodes_bin(server):
    raw = b"\x00\x01\xfe\xff"
    extra = [
        ("grpc-timeout", "5S"),
        ("grpc-encoding", "identity"),
        ("grpc-accept-encoding", "gzip"),
        ("x-custom", "value"),
        ("x-unpadded-bin", base64.b64encode(raw).decode().rstrip("=")),
        ("x-padded-bin", base64.b64encode(raw + b"!").decode()),
    ]
    with Wire(server.port) as wire:
        assert wire.answer(wire.call(ECHO, b"m", extra=extra)).status == 0
    assert server.handlers.metadata == [
        (("x-custom", "value"), ("x-unpadded-bin", raw), ("x-padded-bin", raw + b"!"))
    ]
    assert 0 < server.handlers.remaining[0] <= 5.0


# -- connection errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, code",
    [
        (frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
        # Refused on its header: the rest of the payload is never sent.
        (frame(DATA, 0, 1, b"x" * 16_385)[:20], FRAME_SIZE_ERROR),
        (frame(HEADERS, END_HEADERS, 2, b"\x82"), PROTOCOL_ERROR),  # an even stream id
        (frame(CONTINUATION, END_HEADERS, 1, b"\x82"), PROTOCOL_ERROR),  # no HEADERS
        (frame(PUSH_PROMISE, 0, 1, b"\0" * 4), PROTOCOL_ERROR),
        (frame(PING, 0, 0, b"short"), PROTOCOL_ERROR),
    ],
    ids=["data-on-0", "frame-too-large", "even-stream", "lone-continuation", "push", "ping"],
)
def test_protocol_errors_close_the_connection_with_goaway(server, bad, code):
    with Wire(server.port) as wire:
        wire.settle()
        wire.send(bad)
        wire.closed(timeout_s=5)
        assert wire.goaway is not None and wire.goaway[1] == code
    # Other connections are served.
    with Wire(server.port) as other:
        assert other.answer(other.call(ECHO, b"x")).status == 0


def test_header_block_interrupted_by_another_frame_is_a_protocol_error(server):
    with Wire(server.port) as wire:
        wire.settle()
        block = wire.block(request_headers(ECHO))
        wire.send(frame(HEADERS, 0, 1, block[:10]), frame(PING, 0, 0, b"\0" * 8))
        wire.closed(timeout_s=5)
    assert wire.goaway is not None and wire.goaway[1] == PROTOCOL_ERROR
