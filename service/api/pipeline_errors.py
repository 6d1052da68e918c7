"""Translate pipeline exceptions into HTTP answers, in one place for every protocol."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from ..pipeline.batcher import DeadlineExceeded, ModelError, QueueFull
from ..pipeline.pipeline import InvalidImage, NotReady, Overloaded
from ..pipeline.pool import WorkerLost
from .errors import ApiError

log = logging.getLogger(__name__)


@contextmanager
def pipeline_errors(retry_after_s: int) -> Iterator[None]:
    """Map the pipeline's exceptions to ``ApiError`` with the right status and code."""
    retry = {"Retry-After": str(retry_after_s)}
    try:
        yield
    except InvalidImage as exc:
        raise ApiError(400, exc.code, exc.message) from None
    except (Overloaded, QueueFull) as exc:
        raise ApiError(
            503, "overloaded", f"the service is at capacity ({exc}); retry", retry
        ) from None
    except NotReady as exc:
        state = str(exc)
        what = "draining" if state in ("draining", "stopped") else f"not ready ({state})"
        raise ApiError(503, "not_ready", f"the service is {what}; retry", retry) from None
    except WorkerLost as exc:
        raise ApiError(503, "worker_lost", f"{exc}; retry", retry) from None
    except (TimeoutError, DeadlineExceeded):
        raise ApiError(
            504, "deadline_exceeded", "the request did not finish before its deadline"
        ) from None
    except ModelError as exc:
        error_id = exc.error_id or uuid.uuid4().hex[:12]
        log.error("model error %s: %s", error_id, exc)
        raise ApiError(
            500, "model_error", f"the model failed on this batch; error id {error_id}"
        ) from None
