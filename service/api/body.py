"""Reading a request's body and deadline off HTTP: limits enforced while the body streams in."""

from __future__ import annotations

from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from .. import tracing
from ..errors import InvalidInput, PayloadTooLarge
from ..settings import Settings

# The client's deadline in milliseconds, capped by SERVE_REQUEST_TIMEOUT_S.
TIMEOUT_HEADER = "X-Request-Timeout-Ms"


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it passes ``limit`` bytes."""
    with tracing.span("read body"):
        return await receive_body(request.receive, request.headers.get("content-length"), limit)


async def receive_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """``read_body`` on a bare ASGI ``receive`` (``declared``: the Content-Length header)."""
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number", "bad_content_length") from None
        if size > limit:
            raise PayloadTooLarge(f"the body is {size} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def request_timeout_s(request: Request, settings: Settings) -> float:
    """The request's deadline in seconds: the client's header, capped by the server's setting."""
    return timeout_s(request.headers.get(TIMEOUT_HEADER), settings)


def timeout_s(raw: str | None, settings: Settings) -> float:
    """``request_timeout_s`` from the header's value."""
    if raw is None or not raw.strip():
        return settings.request_timeout_s
    try:
        ms = float(raw)
    except ValueError:
        ms = float("nan")
    if not ms > 0 or ms == float("inf"):
        raise InvalidInput(
            f"{TIMEOUT_HEADER} must be a positive number of milliseconds", "invalid_timeout"
        )
    return min(ms / 1000.0, settings.request_timeout_s)
