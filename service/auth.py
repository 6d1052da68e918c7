"""Tokens: which are accepted, which one a request presents, whether it matches. Shared by the
HTTP layer (``api/auth.py``) and the gRPC gate (``grpc/gate.py``).

Tokens come from ``SERVE_AUTH_TOKENS`` (comma-separated, from a Kubernetes Secret through
``envFrom``) and/or ``SERVE_AUTH_TOKENS_FILE`` (one per line, a mounted Secret). With neither,
authentication is off. A client sends ``Authorization: Bearer <token>`` or ``X-API-Key: <token>``
(HTTP headers or gRPC metadata).

Comparison is constant-time (``hmac.compare_digest``) against every configured token, so the
answer's timing does not tell which token, or how much of one, matched. Tokens are never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

from .settings import Settings


def load_tokens(settings: Settings) -> list[bytes]:
    """The configured tokens; an empty list means authentication is off.

    Raises:
        ValueError: ``auth_tokens_file`` is set but cannot be read or holds no token.
    """
    tokens = [t.strip() for t in settings.auth_tokens.get_secret_value().split(",")]
    if settings.auth_tokens_file:
        try:
            text = Path(settings.auth_tokens_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(
                f"SERVE_AUTH_TOKENS_FILE {settings.auth_tokens_file!r}: {exc.strerror}"
            ) from None
        from_file = [line.strip() for line in text.splitlines()]
        from_file = [t for t in from_file if t and not t.startswith("#")]
        if not from_file:
            raise ValueError(f"SERVE_AUTH_TOKENS_FILE {settings.auth_tokens_file!r} has no token")
        tokens += from_file
    return [t.encode("utf-8") for t in tokens if t]


def presented_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of ``Authorization: Bearer`` or ``X-API-Key``, if the headers carry one.

    Shared by HTTP (the ASGI scope's headers) and gRPC (the call's metadata, as bytes).
    """
    for key, value in headers:
        name = key.lower()
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"x-api-key" and value.strip():
            return value.strip()
    return None


def token_matches(presented: bytes, tokens: list[bytes]) -> bool:
    """Constant-time: every token is compared, whatever matched before."""
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented, token)
    return matched
