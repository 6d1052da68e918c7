"""Logging set-up: plain text for people, one JSON object per line for log pipelines."""

from __future__ import annotations

import json
import logging
import random
import time
from contextvars import ContextVar

# The id of the request being handled (set by the metrics middleware); added to every log
# record emitted while handling it, including from tasks the request starts.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


# Its own generator, seeded from the OS: the module-level one belongs to whoever seeds it for
# reproducibility (Keras's set_random_seed draws weight initialisers' seeds from it), and ids
# drawn from it while a model is being built would change that model's weights.
_ids = random.Random()


def new_request_id() -> str:
    """A request id for a request that brought none: 32 hex digits, like a UUID's. From a
    generator of this process, not ``uuid4``, which reads the OS's random source on every
    request; an id only tells requests apart, it guards nothing."""
    return f"{_ids.getrandbits(128):032x}"


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on each record as ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return True


class NoTracebackFilter(logging.Filter):
    """Replaces a record's traceback by one line naming the exception type (the default).

    Tracebacks can carry fragments of request data in exception messages of third-party code;
    the error id in the record ties the line to the answer the client got. Set
    ``SERVE_LOG_TRACEBACKS=true`` to log whole tracebacks while debugging.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None:
            exc_type = record.exc_info[0]
            record.msg = f"{record.msg} [{exc_type.__module__}.{exc_type.__qualname__}]"
            record.exc_info = None
            record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id", "method", "route", "status", "duration_ms"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "info", fmt: str = "text", tracebacks: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if not tracebacks:
        handler.addFilter(NoTracebackFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Access logs are replaced by metrics; keep them at warning to stay quiet under load.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
