"""The HTTP port speaks HTTP/1.1 only: HTTP/2 with prior knowledge is refused at its preface,
and an h2c upgrade is answered over HTTP/1.1, the upgrade ignored and the connection closed;
one with a body is refused, since its body would be read as the other protocol's."""

from __future__ import annotations

import socket
import time

import h2.connection
import httpx


def _exchange(
    server, data: bytes, wait_s: float = 5.0, until_close: bool = False
) -> tuple[bytes, bool]:
    """What the server answers to ``data``, and whether it closed the connection (a 200 is
    taken as kept alive unless ``until_close``)."""
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
            if not until_close and b"\r\n\r\n" in answer and answer.startswith(b"HTTP/1.1 200"):
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


def test_an_upgrade_answered_over_http11_closes_the_connection(server):
    """llhttp gives what follows the head to the protocol asked for: a pipelined request
    behind it is not read, and the close tells the client so instead of leaving it waiting."""
    request = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    answer, closed = _exchange(server, request, until_close=True)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" in answer.lower()
    assert closed and answer.count(b"HTTP/1.1 ") == 1


def test_an_upgrade_with_a_body_is_refused_and_nothing_after_it_is_served(server):
    """The body would never reach the route (the image read as empty), and bytes that come
    later would be parsed as requests of their own."""
    smuggled = b"GET /nope-smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled
    )
    answer, closed = _exchange(server, request)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
    assert b"x-error-code: upgrade_not_supported" in answer
    assert closed and answer.count(b"HTTP/1.1 ") == 1  # the "body" was not served as a request
    # A request with a chunked body the same.
    chunked = request.replace(b"Content-Length: %d" % len(smuggled), b"Transfer-Encoding: chunked")
    answer, closed = _exchange(server, chunked)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and closed
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_a_request_line_that_only_starts_like_the_preface_is_http11(server):
    answer, closed = _exchange(server, b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and closed
