"""``inference.GRPCInferenceService``: the KServe V2 calls, answered from the dataplane.

The methods take parsed messages and raise the service's errors: ``gate.py`` reads, bounds
and parses each call's message, checks its token, and maps the errors onto status codes and
the request metrics. The answers are the HTTP routes' (``api/v2.py``), from the same codec
functions.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from .. import __version__, tracing
from ..codecs import v2
from ..dataplane.dataplane import DataPlane
from ..errors import DeadlineExceeded, NotFound
from ..metrics import Metrics
from . import codec
from .errors import Unimplemented
from .generated import grpc_service_pb2 as pb
from .generated import grpc_service_pb2_grpc as pb_grpc
from .statistics import model_statistics

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
DESCRIPTOR = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
DEADLINE_MARGIN_S = 0.02


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Args:
    plane: the front end's dataplane.
    metrics: its metrics.
    """

    def __init__(self, plane: DataPlane, metrics: Metrics):
        self.plane = plane
        self.settings = plane.settings
        self.metrics = metrics

    def _model(self, name: str, version: str) -> v2.Model:
        return v2.find_model(self.plane, name, version or None)

    # -- health and metadata ---------------------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.plane.fallback.state != "failed")

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def ModelReady(self, request, context):
        # An unknown model or version is not ready (tritonclient's HTTP client answers the
        # same for the HTTP route's 404); its metadata and inference calls say NOT_FOUND.
        try:
            info = self._model(request.name, request.version).info
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=info.ready and not self.plane.draining)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name="resnet-serve", version=__version__, extensions=v2.EXTENSIONS
        )

    async def ModelMetadata(self, request, context):
        return codec.model_metadata(self._model(request.name, request.version))

    async def ModelConfig(self, request, context):
        return codec.model_config(self._model(request.name, request.version), self.settings)

    async def ModelStatistics(self, request, context):
        plane = self.plane
        if request.name:
            models = [self._model(request.name, request.version)]
        else:  # every model, each once (``default`` by its model name)
            infos = [plane.engine.info(name) for name in plane.engine.names()]
            models = [v2.Model(info.model_name, info) for info in infos]
        await self.metrics.settle()
        return model_statistics(models, self.metrics)

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
    return handler


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
