"""Job callbacks: only to allowed hosts, signed with HMAC-SHA256, retried with backoff, sent
with an async HTTP client (httpx) on the job runner's event loop.

The receiver checks ``X-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the raw body with the
shared key ``SERVE_CALLBACK_SECRET`` (compare in constant time, e.g. ``hmac.compare_digest``).
Redirects are not followed (a redirect could lead outside the allow-list).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from ..errors import InvalidInput
from .retry import Backoff, retry

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Signature-256"
MAX_URL = 2048


class CallbackRefused(InvalidInput):
    """The callback URL is malformed or its host is not in ``SERVE_CALLBACK_ALLOWED_HOSTS``."""

    def __init__(self, code: str, message: str):
        super().__init__(message, code)


def check_callback_url(url: str, allowed_hosts: list[str]) -> str:
    """The URL if callbacks may go there; raises ``CallbackRefused`` otherwise.

    An allow-list entry is a host name (any port) or ``host:port`` (that port only), compared
    case-insensitively with the URL's host. No entry: callbacks are off.
    """
    if not allowed_hosts:
        raise CallbackRefused(
            "callbacks_disabled", "callbacks are off (SERVE_CALLBACK_ALLOWED_HOSTS is empty)"
        )
    if len(url) > MAX_URL:
        raise CallbackRefused("invalid_callback_url", f"callback_url is over {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise CallbackRefused("invalid_callback_url", "callback_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused(
            "invalid_callback_url", "callback_url must be an absolute http:// or https:// URL"
        )
    try:
        # What the client sends to: its parser refuses what urlsplit lets through (control
        # characters), which would otherwise surface only at delivery.
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise CallbackRefused("invalid_callback_url", f"callback_url is not valid: {exc}") from None
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("invalid_callback_url", "callback_url must not carry credentials")
    host = parts.hostname.lower()
    port = port or (443 if parts.scheme == "https" else 80)
    if host not in allowed_hosts and f"{host}:{port}" not in allowed_hosts:
        raise CallbackRefused(
            "callback_not_allowed",
            f"callback host {host!r} (port {port}) is not in SERVE_CALLBACK_ALLOWED_HOSTS",
        )
    return url


def sign(body: bytes, secret: str) -> str:
    """The value of the signature header for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str) -> bool:
    """What a receiver does (used by the tests; copy it)."""
    return hmac.compare_digest(sign(body, secret), header)


@dataclass
class Delivery:
    delivered: bool
    attempts: int
    last_error: str = ""
    status: int = 0


class _NotDelivered(Exception):
    """One attempt's failure: the receiver's status (0: none) and what went wrong."""

    def __init__(self, status: int, error: str):
        super().__init__(error)
        self.status = status
        self.error = error

    @property
    def final(self) -> bool:
        """A 4xx other than 408 and 429: the receiver refused this body, and sending it again
        would not change that."""
        return 400 <= self.status < 500 and self.status not in (408, 429)


async def deliver(
    url: str,
    body: bytes,
    *,
    secret: str,
    job_id: str,
    allowed_hosts: list[str],
    timeout_s: float,
    attempts: int,
    backoff_s: float,
) -> Delivery:
    """POST ``body`` to ``url`` until a 2xx, at most ``attempts`` times, sleeping
    ``backoff_s``, then twice that, ... between attempts. A 4xx other than 408 and 429 is final.
    A 3xx is a failure (redirects are not followed)."""
    try:
        check_callback_url(url, allowed_hosts)  # again: the settings may have changed
    except CallbackRefused as exc:
        return Delivery(False, 0, exc.message)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "resnet-serve-callback",
        SIGNATURE_HEADER: sign(body, secret),
        "X-Job-Id": job_id,
    }
    tried = 0

    async def post(attempt: int) -> int:
        nonlocal tried
        tried = attempt
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:  # refused, reset, timeout, DNS
            raise _NotDelivered(0, f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise _NotDelivered(response.status_code, f"HTTP {response.status_code}")
        return response.status_code

    def warn(attempt: int, exc: Exception) -> None:
        log.warning("job %s: callback attempt %d failed (%s); retrying", job_id, attempt, exc)

    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        try:
            status = await retry(
                post,
                tries=attempts,
                backoff=Backoff(backoff_s),
                retryable=lambda exc: isinstance(exc, _NotDelivered) and not exc.final,
                on_retry=warn,
            )
        except _NotDelivered as exc:
            return Delivery(False, tried, exc.error, exc.status)
    return Delivery(True, tried, "", status)
