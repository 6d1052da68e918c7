"""Job callbacks: only to allowed hosts, signed with HMAC-SHA256, retried with backoff.

The receiver checks ``X-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the raw body with the
shared key ``SERVE_CALLBACK_SECRET`` (compare in constant time, e.g. ``hmac.compare_digest``).
Redirects are not followed (a redirect could lead outside the allow-list).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import InvalidInput

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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None  # a 3xx becomes an HTTPError: not delivered


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass
class Delivery:
    delivered: bool
    attempts: int
    last_error: str = ""
    status: int = 0


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


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
    ``backoff_s``, then twice that, ... between attempts. A 4xx other than 408 and 429 is final:
    the receiver refused this body, and sending it again would not change that."""
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
    error, status = "", 0
    for attempt in range(1, attempts + 1):
        try:
            status = await asyncio.to_thread(_post, url, body, headers, timeout_s)
        except (OSError, ValueError) as exc:  # refused, reset, timeout, DNS
            status, error = 0, f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= status < 300:
                return Delivery(True, attempt, "", status)
            error = f"HTTP {status}"
            if 400 <= status < 500 and status not in (408, 429):
                return Delivery(False, attempt, error, status)
        if attempt < attempts:
            log.warning("job %s: callback attempt %d failed (%s); retrying", job_id, attempt, error)
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
    return Delivery(False, attempts, error, status)
