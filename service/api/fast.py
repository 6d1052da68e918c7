"""The hot requests without the framework's machinery: ``POST /v1/classify`` with one raw image,
and the KServe V2 ``infer`` request (JSON, or with binary tensor data).

A front end per core keeps a GPU busy only if the Python each request costs stays small, and
for the commonest request most of that is the framework: routing through every route,
dependency solving, a ``Request`` object, two more middleware layers. This ASGI layer sits
inside the request-id/metrics and authentication layers (so those still apply) and outside the
framework, which the requests it answers never enter (``app.py``), and answers those request
shapes itself, with the same code the routes use (``classify_body``, ``v2.infer_answer``: the
same codecs, the same dataplane, the same error answers in each protocol's shape). Everything
else, including multipart and JSON classify bodies and any query parameter it does not know,
goes on to the framework unchanged, so the answers are the routes' in every case.

``make bench-serving``'s ``v2-http`` row shows what V2 gains (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import msgspec
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import tracing
from ..codecs.classify import RAW_TYPES
from ..dataplane.dataplane import DataPlane
from ..errors import ServeError
from .body import TIMEOUT_HEADER, receive_body, timeout_s
from .classify import PATH, PIPELINE_NAME_MAX, classify_body
from .errors import PLAIN, disconnected_response, serve_error_response, unexpected_response
from .v2 import infer_answer

_TIMEOUT = TIMEOUT_HEADER.lower().encode()
_KNOWN_QUERY = {"top_k", "pipeline"}
# The framework's patterns for these routes: a path parameter is one segment.
_V2_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_ENCODING = b"content-encoding"
_HEADER_LENGTH = b"inference-header-content-length"


class FastPaths:
    """Answers raw-image ``POST /v1/classify`` and V2 ``infer`` requests; passes every other
    request to ``app``.

    Args:
        app: the framework's application (its routes).
        plane: the dataplane.
        route: the framework's route of ``/v1/classify`` (its template labels the metrics).
        v2_routes: its routes of V2 ``infer`` without and with a version.
    """

    def __init__(
        self, app: ASGIApp, plane: DataPlane, route: object, v2_routes: tuple[object, object]
    ):
        self.app = app
        self.plane = plane
        self.route = route
        self.v2_routes = v2_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
        elif scope["path"] == PATH:
            await self.classify(scope, receive, send)
        elif (match := _V2_INFER.fullmatch(scope["path"])) is not None:
            await self.v2_infer(scope, receive, send, match[1], match[2])
        else:
            await self.app(scope, receive, send)

    async def classify(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        except ClientDisconnect:
            await disconnected_response("POST", PATH)(scope, receive, send)
            return
        except Exception as exc:  # outside the framework: its last-resort handler is not here
            await unexpected_response("POST", PATH, exc)(scope, receive, send)
            return
        payload = msgspec.json.encode(answer)  # the same JSON as json.dumps, ~5x faster
        await _answer(send, payload, "application/json", {})

    async def v2_infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        """``POST /v2/models/{name}[/versions/{version}]/infer``, as ``v2.infer`` answers it."""
        encoding = length = header_length = deadline = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value.decode("latin-1")
            elif key == _HEADER_LENGTH:
                header_length = value.decode("latin-1")
            elif key == _ENCODING:
                encoding = value.decode("latin-1")
            elif key == _TIMEOUT:
                deadline = value.decode("latin-1")
        plain, versioned = self.v2_routes
        scope["route"] = plain if version is None else versioned
        plane = self.plane

        async def read() -> bytes:
            with tracing.span("read body"):
                return await receive_body(receive, length, plane.settings.max_body_bytes)

        try:
            content, headers, media_type = await infer_answer(
                plane, name, version, read, encoding, header_length, deadline
            )
        except ServeError as exc:
            response = serve_error_response(exc, plane.settings.retry_after_s, PLAIN)
            await response(scope, receive, send)
            return
        except ClientDisconnect:
            await disconnected_response("POST", scope["path"])(scope, receive, send)
            return
        except Exception as exc:  # outside the framework: its last-resort handler is not here
            await unexpected_response("POST", scope["path"], exc, PLAIN)(scope, receive, send)
            return
        await _answer(send, content, media_type, headers)


async def _answer(send: Send, body: bytes, media_type: str, headers: dict[str, str]) -> None:
    """A 200 with ``body``, its type and length, and ``headers``."""
    raw = [
        (b"content-type", media_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
    ]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": 200, "headers": raw})
    await send({"type": "http.response.body", "body": body})
