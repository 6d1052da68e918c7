"""Pure ASGI middleware: request ids, latency histograms, success/failure counters."""

from __future__ import annotations

import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..metrics import Metrics

UNMATCHED = "unmatched"


class MetricsMiddleware:
    """Counts every HTTP request by route template and status; adds ``X-Request-Id``."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = self.metrics
        start = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        status = 500
        error_code = ""

        async def send_wrapper(message: Message) -> None:
            nonlocal status, error_code
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                for key, value in headers:
                    if key.lower() == b"x-error-code":
                        error_code = value.decode("latin-1")
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        m.pending_requests.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m.pending_requests.dec()
            route = scope.get("route")
            path = getattr(route, "path", UNMATCHED)
            m.request_duration.labels(path, str(status)).observe(time.perf_counter() - start)
            if status < 400:
                m.request_success.labels(path).inc()
            else:
                m.request_failure.labels(path, error_code or f"http_{status}").inc()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            text = value.decode("latin-1")[:128]
            if text.isprintable():
                return text
    return None
