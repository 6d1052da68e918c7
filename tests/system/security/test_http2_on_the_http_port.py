"""The HTTP port speaks HTTP/1.1 only: HTTP/2 with prior knowledge is refused at its preface,
and an h2c upgrade is answered over HTTP/1.1, the upgrade ignored."""

from __future__ import annotations

import socket
import time

import h2.connection
import httpx


def _exchange(server, data: bytes, wait_s: float = 5.0) -> tuple[bytes, bool]:
    """What the server answers to ``data``, and whether it closed the connection."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(data)
        answer, closed = b"", False
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            answer += chunk
            if b"\r\n\r\n" in answer and answer.startswith(b"HTTP/1.1 200"):
                break  # a kept-alive answer: read, the connection stays open
    return answer, closed


def test_http2_prior_knowledge_gets_505_and_a_close(server):
    conn = h2.connection.H2Connection()
    conn.initiate_connection()  # the preface and a SETTINGS frame, as an h2 client sends them
    answer, closed = _exchange(server, conn.data_to_send())
    assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    assert b"x-error-code: http2_not_supported" in answer
    assert b"this port speaks HTTP/1.1 only" in answer
    assert closed
    # The port still serves.
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_an_h2c_upgrade_is_answered_over_http11(server):
    request = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    answer, _ = _exchange(server, request)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"101" not in answer.split(b"\r\n")[0] and b"upgrade: h2c" not in answer.lower()


def test_a_request_line_that_only_starts_like_the_preface_is_http11(server):
    answer, closed = _exchange(server, b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and closed
