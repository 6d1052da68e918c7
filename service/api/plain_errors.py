"""The ``{"error": "<message>"}`` shape that KServe V2 and TensorFlow Serving clients expect.

The rest of the service answers ``{"error": {"code", "message"}}``; routes of the standard
protocols use :class:`PlainErrorRoute` so that their failures keep the protocol's own shape.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import ApiError

log = logging.getLogger(__name__)


def plain_error(
    status: int, message: str, code: str = "", headers: dict[str, str] | None = None
) -> JSONResponse:
    """``{"error": message}``; ``code`` goes to ``X-Error-Code`` for the failure metric."""
    response = JSONResponse({"error": message}, status_code=status, headers=headers)
    response.headers["X-Error-Code"] = code or f"http_{status}"
    return response


class PlainErrorRoute(APIRoute):
    """An ``APIRoute`` whose errors (``ApiError``, HTTP and validation errors) are plain."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return plain_error(exc.status, exc.message, exc.code, exc.headers)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                where = ".".join(str(p) for p in first.get("loc", ()))
                return plain_error(400, f"{where}: {first.get('msg', 'invalid request')}")
            except StarletteHTTPException as exc:
                headers = dict(exc.headers or {})
                return plain_error(exc.status_code, str(exc.detail), headers=headers)
            except Exception as exc:
                error_id = uuid.uuid4().hex[:12]
                log.error("internal error %s on %s", error_id, request.url.path, exc_info=exc)
                return plain_error(
                    500, f"internal error; quote error id {error_id}", "internal_error"
                )

        return route
