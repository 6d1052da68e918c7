"""The HTTP/1.1 connection: uvicorn's httptools protocol, with the service's limits and framing.

httptools (llhttp) parses in C, several times faster than h11, which matters with a front end
per core feeding one accelerator. What this subclass adds:

* The request head (request line and headers) is bounded by ``SERVE_MAX_HEADER_BYTES``
  however it arrives: counted as the parser reports each piece, and as raw bytes while the head
  is incomplete (a head dribbled in, or one huge header value that llhttp buffers). Past it:
  431 with the JSON error shape, and the connection is closed.
* This port speaks HTTP/1.1 only. A connection that opens with the HTTP/2 preface (a client
  with prior knowledge, or gRPC sent to the wrong port) gets 505 and is closed before anything
  else is parsed. A request that asks to switch protocols (``Upgrade`` with ``Connection:
  upgrade``, such as ``h2c``) is answered over HTTP/1.1 (the upgrade is ignored, as RFC 9110
  allows) and the connection then closed: llhttp hands every byte after its head to the
  protocol asked for, so a pipelined request behind it would be lost. One that also declares a
  body gets 400 without being served, for the same reason: its body would never be read, and
  on a later read it would be parsed as requests of its own.
* Malformed requests get the JSON error shape (400) instead of uvicorn's plain text, and the
  connection is closed. That includes a request with both ``Content-Length`` and
  ``Transfer-Encoding``, which llhttp refuses: the bytes after it are never read as a request.
* An answer sent before the request's body has arrived (413 for a body over the limit, 401
  before the body was read) closes the connection *lingering*: the response goes out, the
  write side is shut, and what the client still sends is read and thrown away for at most
  ``LINGER_S`` seconds before the socket is closed. A plain close with unread data makes the
  kernel answer the client's next segment with a reset, which can destroy the response before
  the client reads it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..errors import error_body, protocol_error_path

# How long a connection that was answered before its body arrived keeps reading (and
# discarding) before it is closed.
LINGER_S = 2.0
# The first bytes of an HTTP/2 connection (RFC 9113 section 3.4); one split over several
# reads is refused as malformed HTTP/1.1 (400) instead.
H2_PREFACE = b"PRI * HTTP/2.0"


class HeadTooLarge(Exception):
    """The request head passed ``SERVE_MAX_HEADER_BYTES``."""


class UpgradeWithBody(Exception):
    """A request asks to switch protocols and declares a body (see the module docstring)."""


def _error(status: int, reason: bytes, code: str, message: str, path: str) -> bytes:
    """A whole answer; in the error shape of the protocol of ``path`` (where the request line
    was read)."""
    shaped = {"error": message} if protocol_error_path(path) else error_body(code, message)
    body = json.dumps(shaped).encode()
    head = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"x-error-code: " + code.encode(),
        b"connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class _LingeringClose:
    """The transport a request's response cycle writes to: its ``close`` lingers while the
    request's body is still arriving (see the module docstring). Everything else is the real
    transport's."""

    def __init__(self, protocol: ServeHttpProtocol, transport: asyncio.Transport):
        self._protocol = protocol
        self._transport = transport
        self._closing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._protocol.linger(self._transport)


class ServeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded head, JSON errors and lingering closes.

    The head limit comes from ``config.h11_max_incomplete_event_size`` (uvicorn's only
    setting of that kind, set from ``SERVE_MAX_HEADER_BYTES``).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._limit = int(self.config.h11_max_incomplete_event_size or 16384)
        self._head_bytes = 0  # parsed bytes of the current head
        self._head_raw = 0  # raw bytes received while the current head is incomplete
        self._in_head = True
        self._lingering = False
        self._body_done = True  # the current request's body has been received

    # -- the head limit --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # read and thrown away until the linger ends
        self._unset_keepalive_if_required()
        if self._in_head:
            if self._head_raw == 0 and data.startswith(H2_PREFACE):
                self._refuse_h2()
                return
            self._head_raw += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # no WebSockets here: served as a plain request
            self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse_head()
            elif isinstance(exc.__context__, UpgradeWithBody):
                self._refuse_upgrade()
            else:
                self.send_400_response(str(exc))
            return
        if self._in_head and self._head_raw > self._limit:
            self._refuse_head()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._limit:
            raise HeadTooLarge()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._in_head = True
        self._body_done = False

    def on_url(self, url: bytes) -> None:
        self._count(len(url) + 16)  # the method, the version and the line's punctuation
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_raw = 0
        # llhttp's flag: Upgrade with Connection: upgrade, or CONNECT.
        upgrade = self.parser.should_upgrade()
        if upgrade and self._declares_body():
            raise UpgradeWithBody()
        super().on_headers_complete()
        if self.cycle is not None and not isinstance(self.cycle.transport, _LingeringClose):
            self.cycle.transport = _LingeringClose(self, self.transport)  # type: ignore[assignment]
        if upgrade and self.cycle is not None:
            self.cycle.keep_alive = False  # what follows its head is not read as HTTP/1.1

    def _declares_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b"0")):
                return True
        return False

    def on_message_complete(self) -> None:
        self._body_done = True
        self._in_head = True
        self._head_raw = 0
        super().on_message_complete()

    def _refuse_head(self) -> None:
        message = f"the request line and headers exceed {self._limit} bytes"
        self._refuse(431, b"Request Header Fields Too Large", "header_too_large", message)

    def _refuse_upgrade(self) -> None:
        message = (
            "this port does not switch protocols, and a request that asks to (Upgrade with "
            "Connection: upgrade) cannot carry a body here: send it without those headers"
        )
        self._refuse(400, b"Bad Request", "upgrade_not_supported", message)

    def _refuse_h2(self) -> None:
        message = "this port speaks HTTP/1.1 only; gRPC and HTTP/2 go to the gRPC port"
        self._refuse(505, b"HTTP Version Not Supported", "http2_not_supported", message)

    # -- malformed requests ----------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self.logger.debug("malformed request: %s", msg)
        message = "the request is not valid HTTP/1.1"
        self._refuse(400, b"Bad Request", "bad_http_request", message)

    def _refuse(self, status: int, reason: bytes, code: str, message: str) -> None:
        """Answer and close, in the error shape of the request line's path as far as it was
        read (none yet: the service's own)."""
        path = bytes(getattr(self, "url", b"")).split(b"?", 1)[0].decode("latin-1")
        self._send_and_close(_error(status, reason, code, message, path))

    def _send_and_close(self, response: bytes) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # an answer is already on the wire: no second one
            return
        self.transport.write(response)
        self.linger(self.transport)

    # -- lingering close -------------------------------------------------------------------

    def linger(self, transport: asyncio.Transport) -> None:
        """Close ``transport`` once what was written is sent; if the client may still be
        sending, shut the write side first and discard its bytes for a while."""
        if transport.is_closing():
            return
        if self._body_done and not self._in_head_with_data():
            transport.close()
            return
        self._lingering = True
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_S, transport.close)

    def _in_head_with_data(self) -> bool:
        return self._in_head and self._head_raw > 0

    def eof_received(self) -> None:
        if self._lingering:  # the client read the answer and closed: nothing more to wait for
            self.transport.close()
