"""The service's errors as gRPC status codes: the one place that maps them.

The message is the error's own (what is wrong, for a person); the stable reason travels in
the ``x-error-code`` trailing metadata (the failure metric's ``reason``), as HTTP's
``X-Error-Code`` header does.
"""

from __future__ import annotations

import grpc

from ..errors import ServeError

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    # Past a size limit of the service's own (gRPC's message limit answers the same).
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    # Overloaded, not ready, draining: the code gRPC clients' retry policies retry.
    503: grpc.StatusCode.UNAVAILABLE,
    501: grpc.StatusCode.UNIMPLEMENTED,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

ERROR_CODE_KEY = "x-error-code"


def status_code(exc: ServeError) -> grpc.StatusCode:
    """The gRPC status of a ``ServeError`` (its HTTP status's counterpart)."""
    return _CODES.get(exc.status, grpc.StatusCode.INTERNAL)


class Unimplemented(ServeError):
    """A method of the service definition this server does not offer (gRPC only)."""

    status = 501
    default_code = "unimplemented"
