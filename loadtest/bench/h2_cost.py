# ruff: noqa: T201  (a benchmark: it reports on stdout)
"""What a gRPC server written on the ``h2`` library (pure-Python HTTP/2) would spend on the
protocol alone: the server side of unary calls carrying a message of the benchmark image's
size, in one process, no sockets, no handler. Run by hand:

    .venv/bin/python -m loadtest.bench.h2_cost [--calls 2000] [--bytes 115000]

The question it answers: would serving gRPC on the front end's own event loop through ``h2``
cost less CPU per call than grpcio's ``aio`` server (docs/BENCHMARKS.md, "gRPC")? What it
times per call: parsing the client's HEADERS and DATA frames (HPACK, flow control), returning
the window, and writing the answer's HEADERS, DATA and trailers. A real server adds its
socket I/O, the gRPC framing and the handler.

It times the same bytes a second way, ``framed``: HTTP/2 framing written for this one case
(the frame headers read with ``struct``, the request's header block decoded by ``hpack``, the
DATA payloads joined, the connection's window returned in one WINDOW_UPDATE (the stream has
ended), the answer's HEADERS and trailers as fixed bytes). That is the floor of a unary-only server in Python,
before everything such a server must also do (SETTINGS, PING, GOAWAY, RST_STREAM,
CONTINUATION, the peer's windows, limits): what writing one would buy against grpcio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import uvloop

FRAME = 16_384  # HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which grpc clients keep
REQUEST_HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/inference.GRPCInferenceService/ModelInfer"),
    (":authority", "127.0.0.1:8001"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
    ("grpc-accept-encoding", "identity,deflate,gzip"),
    ("user-agent", "grpc-python/1.76"),
    ("grpc-timeout", "10S"),
]
ANSWER = b"\0" + (64).to_bytes(4, "big") + b"x" * 64  # a top-5 answer is about this size


def connected() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """A client and a server connection past their preface and SETTINGS, with windows large
    enough that no message waits for a WINDOW_UPDATE."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    client.initiate_connection()
    server.initiate_connection()
    big = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 30}
    server.update_settings(big)
    client.update_settings(big)
    server.increment_flow_control_window(1 << 30)
    for _ in range(3):
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    return client, server


def serve(server: h2.connection.H2Connection, frames: bytes) -> bytes:
    """The server's part of one call: what it reads, what it writes back."""
    parts: dict[int, list[bytes]] = {}
    for event in server.receive_data(frames):
        if isinstance(event, h2.events.DataReceived):
            parts.setdefault(event.stream_id, []).append(event.data)
            server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream = event.stream_id
            b"".join(parts.pop(stream))
            server.send_headers(
                stream, [(b":status", b"200"), (b"content-type", b"application/grpc")]
            )
            server.send_data(stream, ANSWER)
            server.send_headers(stream, [(b"grpc-status", b"0")], end_stream=True)
    return server.data_to_send()


_HEADER = struct.Struct(">I")  # frame length (24 bits) and type, read as one int; then flags, id
DATA, HEADERS, WINDOW_UPDATE = 0x0, 0x1, 0x8
END_STREAM, PADDED, PRIORITY = 0x1, 0x8, 0x20
# The answer's header blocks, literal without indexing (no state shared with the decoder):
# ":status: 200" is the static table's index 8; content-type and grpc-status are new names.
_STATUS_200 = b"\x88" + b"\x00\x0ccontent-type\x10application/grpc"
_TRAILERS = b"\x00\x0bgrpc-status\x010"


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">IBI", (len(payload) << 8) | kind, flags, stream) + payload


class Framed:
    """The server's side of unary calls, framed by hand (see the module's docstring)."""

    def __init__(self) -> None:
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.parts: dict[int, list[bytes]] = {}

    def receive(self, data: bytes) -> bytes:
        buffer = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        at, end = 0, len(buffer)
        consumed = 0
        while end - at >= 9:
            (word,) = _HEADER.unpack_from(buffer, at)
            size, kind = word >> 8, word & 0xFF
            if end - at < 9 + size:
                break
            flags = buffer[at + 4]
            stream = _HEADER.unpack_from(buffer, at + 5)[0] & 0x7FFFFFFF
            payload = memoryview(buffer)[at + 9 : at + 9 + size]
            at += 9 + size
            if kind == DATA:
                if flags & PADDED:
                    payload = payload[1 : size - payload[0]]
                self.parts.setdefault(stream, []).append(bytes(payload))
                consumed += size
            elif kind == HEADERS:
                if flags & PADDED:
                    payload = payload[1 : size - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
                self.decoder.decode(bytes(payload), raw=True)  # a server would route on them
                self.parts[stream] = []
            else:
                continue
            if flags & END_STREAM:
                b"".join(self.parts.pop(stream))
                out.append(_frame(HEADERS, 0x4, stream, _STATUS_200))
                out.append(_frame(DATA, 0, stream, ANSWER))
                out.append(_frame(HEADERS, 0x5, stream, _TRAILERS))
        self.buffer = buffer[at:]
        if consumed:  # the connection's window back; the stream has ended
            out.append(_frame(WINDOW_UPDATE, 0, 0, _HEADER.pack(consumed)))
        return b"".join(out)


class _Sink:
    """The transport of a :class:`service.grpc.http2.Connection` timed without sockets."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def take(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None

    def is_closing(self) -> bool:
        return False


def _request(client: h2.connection.H2Connection, message: bytes) -> bytes:
    """The client's frames of one unary call carrying ``message``."""
    stream = client.get_next_available_stream_id()
    client.send_headers(stream, REQUEST_HEADERS)
    for at in range(0, len(message), FRAME):
        end = at + FRAME >= len(message)
        client.send_data(stream, message[at : at + FRAME], end_stream=end)
    return client.data_to_send()


def _answered(client: h2.connection.H2Connection, data: bytes) -> bool:
    """Whether the server's bytes end the call with grpc-status 0 (its DATA acknowledged)."""
    ok = False
    for event in client.receive_data(data):
        if isinstance(event, h2.events.DataReceived):
            client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        if isinstance(event, h2.events.TrailersReceived):
            ok = dict(event.headers).get(b"grpc-status") == b"0"
    return ok


async def _native(calls: int, message: bytes) -> float:
    """CPU seconds the native server's transport (``service/grpc/http2.py``) spends on
    ``calls`` unary calls, its handler a task that reads the message and answers (as
    ``native.py`` runs them), on this event loop."""
    from service.grpc.http2 import Connection, Limits

    answered = 0

    async def handle(stream) -> None:
        nonlocal answered
        if await stream.read(10.0) is None:
            raise SystemExit("native: the handler read no message")
        stream.answer(ANSWER[5:])
        answered += 1

    loop = asyncio.get_running_loop()
    limits = Limits(32, 8 << 20, 16 << 10, idle_s=60.0, keepalive_s=60.0)
    server = Connection(limits, lambda stream: loop.create_task(handle(stream)), lambda c: None)
    sink = _Sink()
    server.connection_made(sink)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 30})
    client.increment_flow_control_window(1 << 30)
    server.data_received(client.data_to_send())
    client.receive_data(sink.take())
    server.data_received(client.data_to_send())
    spent = 0.0
    for call in range(calls):
        frames = _request(client, message)
        start = time.process_time()
        server.data_received(frames)
        while answered <= call:  # the handler's task runs on the next turns of the loop
            await asyncio.sleep(0)
        spent += time.process_time() - start
        if not _answered(client, sink.take()):
            raise SystemExit("native: the client read no grpc-status 0 for its call")
        server.data_received(client.data_to_send())
        sink.take()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--bytes", type=int, default=115_000, help="the request message")
    args = parser.parse_args()
    message = b"\0" + args.bytes.to_bytes(4, "big") + os.urandom(args.bytes)
    spent = uvloop.run(_native(args.calls, message))
    print(
        f"native (service/grpc/http2.py, uvloop): {1e6 * spent / args.calls:.0f} µs of CPU per "
        f"unary call on the server side, the handler's task included ({len(message):,}-byte "
        f"message, {args.calls} calls)"
    )
    for way in ("h2", "framed"):
        client, server = connected()
        framed = Framed()
        spent = 0.0
        for _ in range(args.calls):
            frames = _request(client, message)
            start = time.process_time()
            answer = serve(server, frames) if way == "h2" else framed.receive(frames)
            spent += time.process_time() - start
            if not _answered(client, answer):
                raise SystemExit(f"{way}: the client read no grpc-status 0 for its call")
            if way == "h2":
                server.receive_data(client.data_to_send())
            else:
                client.data_to_send()
        name = f"h2 {h2.__version__}" if way == "h2" else f"framed (hpack {hpack.__version__})"
        print(
            f"{name}: {1e6 * spent / args.calls:.0f} µs of CPU per unary call on the server "
            f"side ({len(message):,}-byte message, {args.calls} calls)"
        )


if __name__ == "__main__":
    main()
