"""Reading a request's body and deadline off HTTP: limits enforced while the body streams in."""

from __future__ import annotations

from fastapi import Request

from ..errors import InvalidInput, PayloadTooLarge
from ..settings import Settings

# The client's deadline in milliseconds, capped by SERVE_REQUEST_TIMEOUT_S.
TIMEOUT_HEADER = "X-Request-Timeout-Ms"


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number", "bad_content_length") from None
        if size > limit:
            raise PayloadTooLarge(f"the body is {size} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def request_timeout_s(request: Request, settings: Settings) -> float:
    """The request's deadline in seconds: the client's header, capped by the server's setting."""
    raw = request.headers.get(TIMEOUT_HEADER)
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
