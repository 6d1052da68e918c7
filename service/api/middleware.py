"""Pure ASGI middleware: request ids, latency histograms, success/failure counters."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import tracing
from ..errors import ShuttingDown
from ..logs import new_request_id
from ..logs import request_id as current_request_id
from ..metrics import Metrics
from .errors import scope_shape, serve_error_response

access = logging.getLogger("service.access")

UNMATCHED = "unmatched"
# A layer that answers before routing names the request's ``route`` label here (the scope is
# shared down the stack): refused requests then show apart from scans of unknown paths.
ROUTE_LABEL = "serve.route_label"


class MetricsMiddleware:
    """Counts every HTTP request by route template and status; adds ``X-Request-Id``.

    The request id is also put on every log record emitted while the request is handled;
    with ``access_log`` one line per request is logged (id, method, route, status, duration).

    The requests still running when a drain's ``SERVE_GRACEFUL_TIMEOUT_S`` ends are cancelled
    by uvicorn, which would log each as an exception in the application and answer it ``500``:
    while ``draining()``, one cancelled before its answer started is answered ``503
    shutting_down`` with ``Retry-After`` (``retry_after_s``) and ``Connection: close`` instead,
    in its route's error shape, so that its client retries elsewhere.

    ``HEAD`` is served as ``GET`` (RFC 9110 section 9.3.2: the same status and headers, no
    content; the HTTP server leaves out the body of a HEAD request's answer), so that a
    monitor or proxy that checks with HEAD gets what GET answers instead of a 405.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        access_log: bool = False,
        draining: Callable[[], bool] = lambda: False,
        retry_after_s: int = 1,
    ):
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.draining = draining
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = self.metrics
        start = time.perf_counter()
        # A copy for HEAD: the HTTP server reads the method from its own scope to leave the
        # body out; the layers inside see GET, and write the route they matched into it.
        inner = scope if scope["method"] != "HEAD" else {**scope, "method": "GET"}
        request_id = _header(scope, b"x-request-id") or new_request_id()
        status = 500
        started = False
        error_code = ""

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started, error_code
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = list(message.get("headers", []))
                for key, value in headers:
                    if key.lower() == b"x-error-code":
                        error_code = value.decode("latin-1")
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        span = tracing.http_request(scope) if tracing.ENABLED else None
        m.pending_requests.inc()
        # Not reset at the end: each request runs in a task of its own, and uvicorn logs an
        # exception that escapes this layer after it returns, still under the request's id.
        current_request_id.set(request_id)
        try:
            await self.app(inner, receive, send_wrapper)
        except asyncio.CancelledError:
            if started or not self.draining():
                raise
            await self._cut_off(inner, receive, send_wrapper)
        finally:
            m.pending_requests.dec()
            route = inner.get("route")
            path = getattr(route, "path", None) or inner.get(ROUTE_LABEL, UNMATCHED)
            elapsed = time.perf_counter() - start
            m.request_duration.labels(path, str(status), "http").observe(elapsed)
            if span is not None:
                tracing.http_done(span, scope["method"], path, status)
            if self.access_log:
                extra = {
                    "method": scope["method"],
                    "route": path,
                    "status": status,
                    "duration_ms": round(1000 * elapsed, 3),
                }
                if span is not None:
                    extra["trace_id"] = span.trace_id
                access.info("%s %s %d", scope["method"], path, status, extra=extra)
            if status < 400:
                m.request_success.labels(path, "http").inc()
            else:
                m.request_failure.labels(path, error_code or f"http_{status}", "http").inc()

    async def _cut_off(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ShuttingDown("the service stopped before the answer was ready; retry")
        response = serve_error_response(error, self.retry_after_s, scope_shape(scope))
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            text = value.decode("latin-1")[:128]
            if text.isprintable():
                return text
    return None
