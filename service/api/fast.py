"""The hot request without the framework's machinery: ``POST /v1/classify`` with one raw image.

A front end per core keeps a GPU busy only if the Python each request costs stays small, and
for the commonest request most of that is the framework: routing through every route,
dependency solving, a ``Request`` object, two more middleware layers. This ASGI layer sits
inside the request-id/metrics and authentication layers (so those still apply) and outside the
framework, which the requests it answers never enter (``app.py``), and answers that one request
shape itself, with the same code the route uses (``classify_body``, the same
codec, the same dataplane, the same error answers). Everything else, including multipart and
JSON bodies and any query parameter it does not know, goes on to the framework unchanged, so
the answers are the route's in every case.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import tracing
from ..codecs.classify import RAW_TYPES
from ..dataplane.dataplane import DataPlane
from ..errors import ServeError
from .body import TIMEOUT_HEADER, receive_body, timeout_s
from .classify import PATH, PIPELINE_NAME_MAX, classify_body
from .errors import serve_error_response, unexpected_response

_TIMEOUT = TIMEOUT_HEADER.lower().encode()
_KNOWN_QUERY = {"top_k", "pipeline"}


class FastClassify:
    """Answers raw-image ``POST /v1/classify`` requests; passes every other request to ``app``.

    Args:
        app: the framework's application (its routes).
        plane: the dataplane.
        route: the framework's route for the path (its template labels the metrics).
    """

    def __init__(self, app: ASGIApp, plane: DataPlane, route: object):
        self.app = app
        self.plane = plane
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        content_type = length = deadline = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                length = value.decode("latin-1")
            elif name == _TIMEOUT:
                deadline = value.decode("latin-1")
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        kind = (content_type or "").lower()
        if (
            (kind and not kind.startswith(RAW_TYPES))
            or not set(query) <= _KNOWN_QUERY
            or len(query.get("pipeline", "")) > PIPELINE_NAME_MAX  # the route answers it
        ):
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        plane = self.plane
        try:
            name = query.get("pipeline") or None
            checked = plane.check(name)  # before reading a large body
            timeout = timeout_s(deadline, plane.settings)
            with tracing.span("read body"):
                body = await receive_body(receive, length, plane.settings.max_body_bytes)
            answer = await classify_body(
                plane, checked, name, body, content_type or "", query.get("top_k"), timeout
            )
        except ServeError as exc:
            response = serve_error_response(exc, plane.settings.retry_after_s)
            await response(scope, receive, send)
            return
        except Exception as exc:  # outside the framework: its last-resort handler is not here
            await unexpected_response("POST", PATH, exc)(scope, receive, send)
            return
        payload = msgspec.json.encode(answer)  # the same JSON as json.dumps, ~5x faster
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
