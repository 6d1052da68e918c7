"""``inference.GRPCInferenceService``: the KServe V2 calls, answered from the dataplane.

Every call goes through :func:`rpc`: the token check (when tokens are configured), the request
id, the request metrics (``route`` the method's name, ``status`` the gRPC status name,
``protocol="grpc"``), and the one mapping of the service's errors onto status codes. The
answers are the HTTP routes' (``api/v2.py``), from the same codec functions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from .. import __version__, tracing
from ..api.auth import token_matches
from ..codecs import v2
from ..dataplane.dataplane import DataPlane
from ..errors import DeadlineExceeded, NotFound, ServeError, Unauthorized
from ..logs import request_id as current_request_id
from ..metrics import Metrics
from . import codec
from .errors import ERROR_CODE_KEY, Unimplemented, status_code
from .generated import grpc_service_pb2 as pb
from .generated import grpc_service_pb2_grpc as pb_grpc
from .statistics import model_statistics

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]

SERVICE = "inference.GRPCInferenceService"
# Statuses that are the server's failure (their message carries the trace id, as a 5xx body).
SERVER_ERRORS = {"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS"}
DEADLINE_MARGIN_S = 0.02


def rpc(method: Handler) -> Handler:
    """Authentication, request id, metrics and error mapping around one call."""
    route = method.__name__

    @functools.wraps(method)
    async def handler(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext):
        m = self.metrics
        start = time.perf_counter()
        status, reason = "OK", ""
        span = None
        if tracing.ENABLED:
            span = tracing.grpc_request(SERVICE, route, context.invocation_metadata() or ())
        m.pending_requests.inc()
        try:
            rid = self._begin(context)
            current_request_id.set(rid or getattr(request, "id", "") or uuid.uuid4().hex)
            return await method(self, request, context)
        except ServeError as exc:
            code = status_code(exc)
            status, reason = code.name, exc.code
            message = exc.message
            if span is not None and code.name in SERVER_ERRORS:
                message = f"{message} (trace id {span.trace_id})"
            await context.abort(code, message, ((ERROR_CODE_KEY, exc.code),))
        except asyncio.CancelledError:  # the client went away, or its deadline passed
            status, reason = "CANCELLED", "cancelled"
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            error_id = uuid.uuid4().hex[:12]
            log.error("internal error %s in %s", error_id, route, exc_info=exc)
            status, reason = "INTERNAL", "internal_error"
            trace = f", trace id {span.trace_id}" if span is not None else ""
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error; quote error id {error_id}{trace}",
                ((ERROR_CODE_KEY, reason),),
            )
        finally:
            m.pending_requests.dec()
            if span is not None:
                tracing.grpc_done(span, status, getattr(grpc.StatusCode, status).value[0])
            m.request_duration.labels(route, status, "grpc").observe(time.perf_counter() - start)
            if status == "OK":
                m.request_success.labels(route, "grpc").inc()
            else:
                m.request_failure.labels(route, reason, "grpc").inc()

    return handler  # type: ignore[return-value]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Args:
    plane: the front end's dataplane.
    metrics: its metrics.
    tokens: accepted tokens; empty: no authentication.
    """

    def __init__(self, plane: DataPlane, metrics: Metrics, tokens: list[bytes]):
        self.plane = plane
        self.settings = plane.settings
        self.metrics = metrics
        self.tokens = tokens

    def _begin(self, context: grpc.aio.ServicerContext) -> str | None:
        """The client's ``x-request-id``, once its token (if tokens are on) is checked."""
        rid = token = None
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id" and isinstance(value, str):
                rid = value[:128] if value[:128].isprintable() else None
            elif key == "authorization" and isinstance(value, str):
                scheme, _, credentials = value.partition(" ")
                if scheme.lower() == "bearer" and credentials.strip():
                    token = credentials.strip()
            elif key == "x-api-key" and isinstance(value, str) and value.strip():
                token = value.strip()
        if self.tokens:
            if token is None:
                raise Unauthorized(
                    "authentication required: send the metadata "
                    "'authorization: Bearer <token>' or 'x-api-key: <token>'"
                )
            if not token_matches(token.encode(), self.tokens):
                raise Unauthorized("the token is not valid", "invalid_token")
        return rid

    def _model(self, name: str, version: str) -> v2.Model:
        return v2.find_model(self.plane, name, version or None)

    # -- health and metadata ---------------------------------------------------------------

    @rpc
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.plane.fallback.state != "failed")

    @rpc
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.plane.ready)

    @rpc
    async def ModelReady(self, request, context):
        # An unknown model or version is not ready (tritonclient's HTTP client answers the
        # same for the HTTP route's 404); its metadata and inference calls say NOT_FOUND.
        try:
            info = self._model(request.name, request.version).info
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=info.ready and not self.plane.draining)

    @rpc
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name="resnet-serve", version=__version__, extensions=v2.EXTENSIONS
        )

    @rpc
    async def ModelMetadata(self, request, context):
        return codec.model_metadata(self._model(request.name, request.version))

    @rpc
    async def ModelConfig(self, request, context):
        return codec.model_config(self._model(request.name, request.version), self.settings)

    @rpc
    async def ModelStatistics(self, request, context):
        plane = self.plane
        if request.name:
            models = [self._model(request.name, request.version)]
        else:  # every model, each once (``default`` by its model name)
            infos = [plane.engine.info(name) for name in plane.engine.names()]
            models = [v2.Model(info.model_name, info) for info in infos]
        return model_statistics(models, self.metrics)

    @rpc
    async def RepositoryIndex(self, request, context):
        states = {"ready": "READY", "loading": "LOADING", "created": "LOADING"}
        out = pb.RepositoryIndexResponse()
        for name in self.plane.engine.names():
            info = self.plane.engine.info(name)
            state = states.get(info.state, "UNAVAILABLE")
            if request.ready and state != "READY":
                continue
            out.models.add(
                name=info.model_name, version=v2.VERSION, state=state, reason=info.error or ""
            )
        return out

    # -- inference -------------------------------------------------------------------------

    @rpc
    async def ModelInfer(self, request, context):
        plane = self.plane
        model = self._model(request.model_name, request.model_version)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("the request's deadline passed before it was read")
        timeout = self.settings.request_timeout_s
        if remaining is not None:
            # A little before the client's own timer fires: the client then reads the
            # service's answer (what was late) instead of a bare cancellation.
            timeout = min(timeout, remaining - min(DEADLINE_MARGIN_S, remaining / 10))
        infer_request, want = codec.decode_infer(request, model, self.settings, timeout)
        result = await plane.infer(infer_request)
        with tracing.span("answer"):
            return codec.encode_infer(
                request.model_name, request.id, result.probabilities, want, result.pipeline.labels
            )


def _unimplemented(method: str, why: str) -> Callable[..., Awaitable[None]]:
    async def handler(self, request, context):
        raise Unimplemented(f"{method}: {why}")

    handler.__name__ = method
    return rpc(handler)


_NOT_HERE = {
    "ModelStreamInfer": "streaming inference is not supported; call ModelInfer "
    "(concurrent calls share batches)",
    "RepositoryModelLoad": "the models are fixed at start (SERVE_PIPELINES_FILE)",
    "RepositoryModelUnload": "the models are fixed at start (SERVE_PIPELINES_FILE)",
    "SystemSharedMemoryStatus": "shared memory is not supported; send tensors in the request",
    "SystemSharedMemoryRegister": "shared memory is not supported; send tensors in the request",
    "SystemSharedMemoryUnregister": "shared memory is not supported; send tensors in the request",
    "CudaSharedMemoryStatus": "shared memory is not supported; send tensors in the request",
    "CudaSharedMemoryRegister": "shared memory is not supported; send tensors in the request",
    "CudaSharedMemoryUnregister": "shared memory is not supported; send tensors in the request",
    "TraceSetting": "tracing is not supported; see the metrics and the access log",
    "LogSettings": "log settings are fixed at start (SERVE_LOG_LEVEL, SERVE_LOG_FORMAT)",
}
for _method, _why in _NOT_HERE.items():
    setattr(InferenceServicer, _method, _unimplemented(_method, _why))
