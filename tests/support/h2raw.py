"""A raw HTTP/2 client for the hostile-client tests: frames written with the ``h2`` library
(or by hand, where ``h2`` refuses to write what a hostile client would), answers read back
as events. Loopback only; every read is bounded in time."""

from __future__ import annotations

import socket
import struct
import time
import urllib.parse
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def grpc_frame(message: bytes, announced: int | None = None) -> bytes:
    """A gRPC length-prefixed message: flag 0 (not compressed), the length, the bytes."""
    return struct.pack(">BI", 0, len(message) if announced is None else announced) + message


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One HTTP/2 frame, written by hand (for what ``h2`` refuses to send)."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


def grpc_headers(authority: str, path: str, extra: list[tuple[str, str]] = ()) -> list:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


@dataclass
class Answer:
    """What came back on one stream."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    ended: bool = False
    reset: int | None = None  # the RST_STREAM error code

    @property
    def grpc_status(self) -> int | None:
        status = self.headers.get("grpc-status")
        return None if status is None else int(status)

    @property
    def grpc_message(self) -> str:
        return urllib.parse.unquote(self.headers.get("grpc-message", ""))


class RawH2:
    """One HTTP/2 connection to ``host:port`` (loopback).

    Args:
        address: ``host:port``.
        timeout_s: the socket's timeout for writes (a server that stops reading).

    The server's SETTINGS are acknowledged only when the client reads (``pump``): a client
    that writes before reading has not acknowledged them.
    """

    def __init__(self, address: str, timeout_s: float = 10.0):
        host, port = address.rsplit(":", 1)
        assert host.startswith("127."), "loopback only"
        self.authority = address
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.ENABLE_PUSH: 0}
        )
        # Header blocks unencoded: hpack's pure-Python Huffman coder takes seconds per MB.
        encode = self.conn.encoder.encode
        self.conn.encoder.encode = lambda headers, huffman=True: encode(headers, huffman=False)
        self.answers: dict[int, Answer] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.remote_max_streams: int | None = None
        self.conn.initiate_connection()
        self.flush()

    # -- writing -----------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(
        self,
        path: str,
        message: bytes | None,
        end: bool = True,
        extra: list[tuple[str, str]] | tuple = (),
    ) -> int:
        """Open a stream for ``path``; send ``message`` (already framed) unless None."""
        sid = self.conn.get_next_available_stream_id()
        headers = grpc_headers(self.authority, path, extra)
        self.conn.send_headers(sid, headers, end_stream=message is None and end)
        self.answers[sid] = Answer()
        if message is not None:
            self._send_data(sid, message, end)
        self.flush()
        return sid

    def _send_data(self, sid: int, data: bytes, end: bool, timeout_s: float = 10.0) -> None:
        """Send ``data`` as flow control allows (reading the server's window updates)."""
        if not data:
            self.conn.send_data(sid, b"", end_stream=end)
            return
        view, sent = memoryview(data), 0
        deadline = time.monotonic() + timeout_s
        while sent < len(data):
            window = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self.flush()
                if not self.pump(min(deadline, time.monotonic() + 0.05)) or (
                    time.monotonic() > deadline or self.answers.get(sid, Answer()).ended
                ):
                    return  # the server stopped reading (or answered): the rest is not sent
                continue
            chunk = bytes(view[sent : sent + window])
            sent += len(chunk)
            self.conn.send_data(sid, chunk, end_stream=end and sent == len(data))
        self.flush()

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid)
        self.flush()

    # -- reading -----------------------------------------------------------------------------

    def pump(self, until: float) -> bool:
        """Read and handle what arrives by ``until`` (monotonic): one read, or none when
        nothing came; False once the connection ended."""
        if self.closed:
            return False
        self.sock.settimeout(max(until - time.monotonic(), 0.001))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return True
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self._handle(data)
        return True

    def _handle(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return
        for event in events:
            sid = getattr(event, "stream_id", None)
            answer = self.answers.get(sid) if sid else None
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                if answer is not None:
                    answer.headers.update(dict(event.headers))
            elif isinstance(event, h2.events.DataReceived):
                if answer is not None:
                    answer.data += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded):
                if answer is not None:
                    answer.ended = True
            elif isinstance(event, h2.events.StreamReset):
                if answer is not None:
                    answer.reset = int(event.error_code)
                    answer.ended = True
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                changed = event.changed_settings.get(
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
                )
                if changed is not None:
                    self.remote_max_streams = changed.new_value
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        self.flush()

    def wait(self, sid: int, timeout_s: float = 10.0) -> Answer:
        """The stream's answer once it ended, or what came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.answers[sid].ended and time.monotonic() < deadline:
            if not self.pump(min(deadline, time.monotonic() + 0.2)):
                break
        return self.answers[sid]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
