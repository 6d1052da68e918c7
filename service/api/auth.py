"""HTTP authentication: API keys or bearer tokens (``service/auth.py``), checked before the
request body is read. Paths in ``SERVE_AUTH_EXEMPT_PATHS`` (probes, metrics) pass without one;
CORS preflights are answered by the CORS layer, outside this one."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from ..auth import presented_token, token_matches
from .errors import error_response, path_shape
from .middleware import ROUTE_LABEL

# The route label of refused requests (before routing, so no route template is known).
REFUSED_ROUTE = "auth"

log = logging.getLogger(__name__)


class AuthMiddleware:
    """Answers 401 (JSON, ``WWW-Authenticate: Bearer``) to requests without a valid token, in
    the error shape of the path's protocol.

    Args:
        app: the wrapped application.
        tokens: accepted tokens (non-empty).
        exempt_paths: paths served without a token.
    """

    def __init__(self, app: ASGIApp, tokens: list[bytes], exempt_paths: list[str]):
        if not tokens:
            raise ValueError("AuthMiddleware needs at least one token")
        self.app = app
        self.tokens = tokens
        self.exempt = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        presented = presented_token(scope.get("headers", []))
        if presented is not None and token_matches(presented, self.tokens):
            await self.app(scope, receive, send)
            return
        code = "unauthorized" if presented is None else "invalid_token"
        message = (
            "authentication required: send Authorization: Bearer <token> or X-API-Key"
            if presented is None
            else "the token is not valid"
        )
        log.warning("refused %s %s: %s", scope["method"], scope["path"], code)
        scope[ROUTE_LABEL] = REFUSED_ROUTE
        headers = {"WWW-Authenticate": "Bearer"}
        response = error_response(401, code, message, headers, path_shape(scope["path"]))
        await response(scope, receive, send)
