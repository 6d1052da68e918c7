"""The one place where errors become HTTP answers, in each protocol's error shape.

Registered once (:func:`install`). Every ``ServeError`` raised by a route, codec, stage or store
is answered with its status and code; framework errors (unknown route, validation) and
unexpected exceptions get the same treatment. The shape depends on the route that failed:

* native routes: ``{"error": {"code": "...", "message": "...", ...details}}``;
* routes of the standard protocols (KServe V2, TensorFlow Serving), whose clients parse
  ``{"error": "<message>"}``: their router uses :class:`PlainErrorRoute`.

Either way the code travels in ``X-Error-Code`` (the failure metric's ``reason``), and 503s
carry ``Retry-After``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import tracing
from ..errors import InternalError, ServeError, bounded, error_body, protocol_error_path

log = logging.getLogger(__name__)

NATIVE, PLAIN = "native", "plain"

# A client that went away before its request was read: nginx's "client closed request". The
# answer reaches no one (the server drops what is sent after a disconnect); its status and code
# are what the access log and the failure metric count, as gRPC counts a cancelled call.
CLIENT_CLOSED = 499

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


class PlainErrorRoute(APIRoute):
    """A route of a standard protocol: its errors are ``{"error": "<message>"}``."""

    error_shape = PLAIN


def path_shape(path: str) -> str:
    """The error shape of ``path`` for an answer given before or without routing
    (authentication, a path no route serves): the standard protocols' paths (``/v2...``;
    TensorFlow Serving's ``/v1/models/{name}...``, not the native ``/v1/models``) get theirs,
    whose clients parse ``{"error": "<message>"}``."""
    return PLAIN if protocol_error_path(path) else NATIVE


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    shape: str = NATIVE,
    details: dict[str, object] | None = None,
) -> JSONResponse:
    """An error answer in ``shape``; ``details`` are extra fields of the native shape. The
    message is bounded (``errors.bounded``): it may quote what the client sent."""
    message = bounded(message)
    if shape == PLAIN:
        body: dict[str, object] = {"error": message}
    else:
        body = error_body(code, message, **(details or {}))
    if status >= 500 and tracing.ENABLED:  # where to look in the traces
        trace = tracing.trace_id()
        if trace:
            body["trace_id"] = trace
    response = JSONResponse(body, status_code=status, headers=headers)
    response.headers["X-Error-Code"] = code  # read by the metrics middleware
    return response


def serve_error_response(exc: ServeError, retry_after_s: int, shape: str = NATIVE) -> JSONResponse:
    """A ``ServeError``'s answer: 503s with ``Retry-After``, a 413 closes the connection (the
    body is not read on; ``server/http.py`` closes it lingering)."""
    headers = {"Retry-After": str(retry_after_s)} if exc.retry else {}
    if exc.status == 413:
        headers["Connection"] = "close"
    return error_response(exc.status, exc.code, exc.message, headers, shape, exc.details)


def disconnected_response(method: str, path: str) -> Response:
    """The answer to a request whose client disconnected: not the server's failure."""
    log.info("the client of %s %s disconnected before its request was read", method, path)
    return Response(status_code=CLIENT_CLOSED, headers={"X-Error-Code": "cancelled"})


def scope_shape(scope: Mapping[str, Any]) -> str:
    """The matched route's shape; a request no route matched, its path's (``path_shape``)."""
    route = scope.get("route")
    if route is None:
        return path_shape(scope["path"])
    return getattr(route, "error_shape", NATIVE)


def retry_headers(request: Request) -> dict[str, str]:
    return {"Retry-After": str(request.app.state.settings.retry_after_s)}


def install(app: FastAPI) -> None:
    """Register the handlers that answer every error in its route's shape."""

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        retry_after_s = request.app.state.settings.retry_after_s
        return serve_error_response(exc, retry_after_s, scope_shape(request.scope))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        shape = scope_shape(request.scope)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        if shape == PLAIN:
            code = f"http_{exc.status_code}"
        else:
            code = _STATUS_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, message, dict(exc.headers or {}), shape)

    @app.exception_handler(ClientDisconnect)
    async def _disconnected(request: Request, exc: ClientDisconnect) -> Response:
        return disconnected_response(request.method, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        message = f"{where}: {first['msg']}"
        if scope_shape(request.scope) == PLAIN:
            return error_response(400, "http_400", message, shape=PLAIN)
        return error_response(422, "invalid_request", message, details={"details": problems})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_response(
            request.method, request.url.path, exc, scope_shape(request.scope)
        )


def unexpected_response(
    method: str, path: str, exc: Exception, shape: str = NATIVE
) -> JSONResponse:
    """A bug's answer: 500 with an error id, which the log line with the traceback carries."""
    return serve_error_response(InternalError.of(exc, f"{method} {path}", log), 0, shape)
