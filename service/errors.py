"""The service's errors: one class per kind of failure, each with its HTTP status and code.

Stages, codecs and stores raise these; they know nothing about HTTP or gRPC. One place per
transport maps them onto the wire (``api/errors.py`` for HTTP, in each protocol's error shape;
the gRPC servicer onto status codes). A subclass names the kind; ``code`` is the stable
machine-readable reason (also the ``reason`` label of the failure metric) and may be more
precise than the class's default (``InvalidInput("...", "invalid_base64")``).

To add an error: subclass the kind it is (or ``ServeError`` for a new kind), give it a default
``code``, and raise it. Nothing else changes.

This module imports nothing beyond the standard library: the spawned preprocessing workers
raise these, and they cross process boundaries by pickling.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")

# The most bytes of an error message a client gets (UTF-8). Messages quote what the client
# sent (a model name, a shape); quoted whole, a 64 KB name made gRPC answers that the caller's
# own library refuses (its default limit on received metadata is 16 KB, and the status message
# travels percent-encoded in it: up to 3 bytes per byte).
MESSAGE_LIMIT = 1024


def bounded(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` cut to at most ``limit`` UTF-8 bytes, keeping its start and its end (what
    was wrong, and what is allowed) around a note of how much was left out.

    What UTF-8 cannot carry (a lone surrogate, which a JSON ``"\\ud800"`` escape decodes to) is
    written as a backslash escape: every transport encodes the message as UTF-8."""
    data = message.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode("utf-8")
    head, tail = data[: limit * 2 // 3], data[-(limit // 4) :]
    left_out = len(data) - len(head) - len(tail)
    return (
        head.decode("utf-8", "ignore")
        + f"... ({left_out} bytes left out) ..."
        + tail.decode("utf-8", "ignore")
    )


class ServeError(Exception):
    """A failure answered to the client as is.

    Args:
        message: what is wrong, for a person.
        code: the stable reason; default: the class's.
        **details: extra fields of the JSON error body (``error_id``, ``state``...).
    """

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"
    # 503s: the client should retry after Retry-After (the transport adds the header).
    retry: ClassVar[bool] = False

    def __init__(self, message: str, code: str | None = None, **details: Any):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details

    def __reduce__(self):  # keep code and details across process boundaries
        return (_rebuild, (type(self), self.message, self.code, self.details))

    def __str__(self) -> str:
        return self.message


def protocol_error_path(path: str) -> bool:
    """Whether ``path`` is a standard protocol's (KServe V2's ``/v2...``; TensorFlow Serving's
    ``/v1/models/{name}...``, not the native ``/v1/models``), whose clients parse
    ``{"error": "<message>"}`` rather than this service's error object."""
    return path == "/v2" or path.startswith(("/v2/", "/v1/models/"))


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The service's JSON error body, ``{"error": {"code", "message", ...}}``: every transport
    that answers in JSON builds it here (HTTP answers, malformed HTTP refused by the server)."""
    return {"error": {"code": code, "message": message, **details}}


def _rebuild(cls: type[ServeError], message: str, code: str, details: dict) -> ServeError:
    error = cls.__new__(cls)
    ServeError.__init__(error, message, code, **details)
    return error


# -- the client sent something wrong (4xx) ------------------------------------------------


class InvalidInput(ServeError):
    """The request or one of its images is not usable (400)."""

    status = 400
    default_code = "invalid_input"


class ImageError(InvalidInput):
    """An input that is not a usable image; ``code`` says why (``empty``, ``not_an_image``,
    ``too_many_pixels``, ``corrupt_image``)."""


class Unauthorized(ServeError):
    """No valid token (401)."""

    status = 401
    default_code = "unauthorized"


class NotFound(ServeError):
    """No such pipeline, model, version, job or route (404)."""

    status = 404
    default_code = "not_found"


class PipelineNotFound(NotFound):
    """No pipeline of that name is configured."""

    default_code = "pipeline_not_found"

    @classmethod
    def of(cls, name: str, known: list[str]) -> PipelineNotFound:
        return cls(f"unknown pipeline {name!r}; configured: {known}")

    @classmethod
    def lookup(cls, pipelines: Mapping[str, T], name: str) -> T:
        """``pipelines[name]``, or this error naming the configured ones."""
        try:
            return pipelines[name]
        except KeyError:
            raise cls.of(name, list(pipelines)) from None


class Conflict(ServeError):
    """The thing exists but its state forbids the operation (409)."""

    status = 409
    default_code = "conflict"


class JobConflict(Conflict):
    """The job cannot be cancelled in its state (``status``): ``job_running`` or
    ``job_finished``."""

    @classmethod
    def of(cls, job_id: str, status: str) -> JobConflict:
        code = "job_running" if status == "running" else "job_finished"
        return cls(
            f"job {job_id} is {status}; only queued jobs can be cancelled", code, status=status
        )


class PayloadTooLarge(ServeError):
    """A body over its limit (413)."""

    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(ServeError):
    """A Content-Type or Content-Encoding the service does not take (415)."""

    status = 415
    default_code = "unsupported_media_type"


# -- the service cannot take it now (503, retry) or in time (504) ----------------------------


class Unavailable(ServeError):
    """The service cannot take this request now; retry after Retry-After (503)."""

    status = 503
    default_code = "unavailable"
    retry = True


class Overloaded(Unavailable):
    """Admitting the request would exceed the bound of images in flight."""

    default_code = "overloaded"


class QueueFull(Overloaded):
    """A model stage's queue in the accelerator process is at its bound."""


class StoreFull(Unavailable):
    """The job store holds its maximum number of jobs; retry later."""

    default_code = "jobs_full"


class StoreUnavailable(Unavailable):
    """The job store cannot be reached (Redis down); retry later."""

    default_code = "jobs_unavailable"


class NotReady(Unavailable):
    """The pipeline is loading, warming up, draining, failed or stopped."""

    default_code = "not_ready"

    @classmethod
    def of(cls, state: str) -> NotReady:
        """The error for a pipeline in ``state``."""
        what = "draining" if state in ("draining", "stopped") else f"not ready ({state})"
        return cls(f"the service is {what}; retry", state=state)


class ShuttingDown(Unavailable):
    """A stage was closed under the request (the service is stopping)."""

    default_code = "shutting_down"


class WorkerLost(Unavailable):
    """A worker process died on this item twice."""

    default_code = "worker_lost"


class EngineUnavailable(Unavailable):
    """The accelerator process is not reachable (starting, or restarting after a crash)."""

    default_code = "engine_unavailable"


class DeadlineExceeded(ServeError):
    """The request's deadline passed before it was answered (504)."""

    status = 504
    default_code = "deadline_exceeded"


# -- the service failed (5xx) ---------------------------------------------------------------


class InternalError(ServeError):
    """A bug: answered with an error id, which the log line carrying the traceback quotes."""

    status = 500
    default_code = "internal_error"

    @classmethod
    def of(cls, exc: BaseException, where: str, log: logging.Logger) -> InternalError:
        error_id = uuid.uuid4().hex[:12]
        log.error("internal error %s in %s", error_id, where, exc_info=exc)
        return cls(f"internal error; quote error id {error_id}", error_id=error_id)


class ModelError(ServeError):
    """The model raised while executing a batch; ``error_id`` names it in the log (500)."""

    status = 500
    default_code = "model_error"

    @property
    def error_id(self) -> str:
        return str(self.details.get("error_id", ""))


# -- an asynchronous job's outcome (recorded in the job, never an HTTP answer) --------------


class JobFailed(ServeError):
    """A job's images could not be classified; ``code`` and the message become its error."""

    default_code = "job_failed"


# -- the service cannot start (before any request; the process exits with the reason) -------


class StartupError(RuntimeError):
    """What stops the service before it serves: the message says what to do."""


class WeightsUnavailable(StartupError):
    """The requested weights cannot be loaded and the service is in strict mode."""


class BackendUnavailable(StartupError):
    """The configured Keras backend cannot run in this process."""
