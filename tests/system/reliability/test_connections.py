"""Connections and limits at the HTTP layer, on a real uvicorn server: keep-alive idle timeout,
a body cut off while it streams in, the request-head limit, malformed HTTP."""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlsplit

import pytest

from service.settings import Settings
from tests.support.helpers import HARDENED_TOKEN

GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body; (0, {}, b"") if the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def _closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    ready, _, _ = select.select([sock], [], [], within_s)
    return bool(ready) and sock.recv(1) == b""


def test_default_keepalive_outlives_common_proxy_idle_timeouts():
    assert Settings().keepalive_timeout_s > 60


def test_idle_connection_is_reused_below_the_keepalive_timeout_and_closed_above(
    hardened_server,
):
    # The hardened server runs with SERVE_KEEPALIVE_TIMEOUT_S=1.
    with _connect(hardened_server.url) as sock:
        for _ in range(3):
            sock.sendall(GET_HEALTHZ)
            assert _read_response(sock)[0] == 200
            time.sleep(0.3)  # idle for less than the timeout: the connection is reused
        assert not _closed_by_peer(sock, 0.1)
        # Idle for longer: the server closes it (EOF), well before this generous bound.
        assert _closed_by_peer(sock, 10)


def test_a_slow_chunked_upload_is_cut_off_before_it_is_all_sent(hardened_server):
    """The body limit (1 MB here) is enforced as the body streams in: the 413 arrives while
    most of a 20 MB upload is still unsent."""
    chunk = b"\xff" * 65536
    planned = 20 * 1024 * 1024
    with _connect(hardened_server.url) as sock:
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: test\r\n"
            b"Authorization: Bearer " + HARDENED_TOKEN.encode() + b"\r\n"
            b"Content-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        answered = False
        while sent < planned:
            ready, _, _ = select.select([sock], [], [], 0)
            if ready:
                answered = True
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                answered = True
                break
            sent += len(chunk)
            time.sleep(0.01)  # a slow client
        assert answered, "the whole body was accepted"
        assert sent < 4 * 1024 * 1024, f"{sent} bytes were taken before the refusal"
        status, headers, body = _read_response(sock)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_a_request_head_over_the_limit_gets_431_json(hardened_server):
    # SERVE_MAX_HEADER_BYTES=4096 on the hardened server.
    with _connect(hardened_server.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"a" * 8000)
        status, headers, body = _read_response(sock)
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "header_too_large"


@pytest.mark.parametrize(
    ("path", "v2_shape"),
    [("/v2/models/m/infer", True), ("/v1/models/m:predict?x=1", True), ("/v1/classify", False)],
)
def test_the_server_layers_refusals_keep_the_paths_error_shape(hardened_server, path, v2_shape):
    """KServe V2 and TF Serving clients parse {"error": "<message>"}, whatever refused them."""
    with _connect(hardened_server.url) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: test\r\nX-Padding: ".encode()
        sock.sendall(head + b"a" * 8000)
        status, _, body = _read_response(sock)
    assert status == 431
    error = json.loads(body)["error"]
    if v2_shape:
        assert isinstance(error, str) and "exceed 4096 bytes" in error
    else:
        assert error["code"] == "header_too_large"
    with _connect(hardened_server.url) as sock:  # malformed after the request line
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nBad Header\r\n\r\n".encode())
        status, _, body = _read_response(sock)
    assert status == 400
    error = json.loads(body)["error"]
    assert isinstance(error, str) if v2_shape else error["code"] == "bad_http_request"


def test_headers_under_the_limit_are_served(hardened_server):
    with _connect(hardened_server.url) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"a" * 2000 + b"\r\n\r\n"
        )
        assert _read_response(sock)[0] == 200


def test_malformed_http_gets_a_json_400(hardened_server):
    with _connect(hardened_server.url) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = _read_response(sock)
    assert status == 400
    assert json.loads(body)["error"]["code"] == "bad_http_request"


def _read_all(sock: socket.socket, within_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes (or ``within_s`` of silence)."""
    data = b""
    sock.settimeout(within_s)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_content_length_with_transfer_encoding_is_refused_and_nothing_behind_it_is_served(
    hardened_server,
):
    """Request smuggling: a front proxy that reads Content-Length would see one request, a
    server that reads Transfer-Encoding two. The service answers the first with 400 and closes:
    the bytes behind it are never read as a request."""
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    with _connect(hardened_server.url) as sock:
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: test\r\n"
            b"Authorization: Bearer " + HARDENED_TOKEN.encode() + b"\r\n"
            b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" % len(body) + body
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, "a second request was read from the same bytes"
    assert b"serve_" not in answer


def test_the_head_limit_holds_when_many_small_headers_arrive_in_one_write(hardened_server):
    # SERVE_MAX_HEADER_BYTES=4096: 5,000 headers of 8 bytes each, all in one sendall.
    headers = b"".join(b"X-%d: y\r\n" % i for i in range(5000))
    with _connect(hardened_server.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + headers + b"\r\n")
        status, _, body = _read_response(sock)
        assert _closed_by_peer(sock, 5)
    assert status == 431
    assert json.loads(body)["error"]["code"] == "header_too_large"


def test_a_head_dribbled_in_is_bounded_before_it_completes(hardened_server):
    with _connect(hardened_server.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Long: ")
        for _ in range(10):  # 10 KB of one header value, in pieces, never finished
            sock.sendall(b"a" * 1024)
            time.sleep(0.01)
        status, _, body = _read_response(sock)
    assert status == 431


def test_a_client_sending_an_over_limit_body_still_reads_the_413(hardened_server):
    """Content-Length over SERVE_MAX_BODY_BYTES (1 MB): the 413 goes out at once, and the
    server keeps reading (and discarding) what the client still sends for a while instead of
    closing under it, so a client that sends its whole body first still reads the answer."""
    size = 8 * 1024 * 1024
    with _connect(hardened_server.url) as sock:
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: test\r\n"
            b"Authorization: Bearer " + HARDENED_TOKEN.encode() + b"\r\n"
            b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % size
        )
        time.sleep(0.2)  # the 413 is on its way back before the body is sent
        chunk = b"\xff" * 65536
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)  # a reset here would be the server closing under the client
        status, headers, body = _read_response(sock)
    assert status == 413 and headers.get("connection") == "close"
    assert json.loads(body)["error"]["code"] == "payload_too_large"
