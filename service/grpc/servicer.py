"""``inference.GRPCInferenceService``: the KServe V2 calls, answered from the dataplane.

The methods take parsed messages and raise the service's errors: ``gate.py`` reads, bounds
and parses each call's message, checks its token, and maps the errors onto status codes and
the request metrics. The answers are the HTTP routes' (``api/v2.py``), from the same codec
functions.

``ModelStreamInfer`` (Triton's streaming API: ``tritonclient``'s ``start_stream`` and
``async_stream_infer``) answers each request of the stream as ``ModelInfer`` would, and keeps
reading while earlier ones run, so that one stream's requests share batches: up to
``SERVE_GRPC_MAX_CONCURRENT_STREAMS`` of them in flight, and ``SERVE_GRPC_MAX_MESSAGE_BYTES``
of their messages (past either, it stops reading until one is answered). The answers go out in
the order the requests came. A request that fails is answered with its ``error_message`` (and,
in the answer's parameters, the status a ``ModelInfer`` call would have ended with and its
``x-error-code``), and the stream goes on. A message that is not a ``ModelInferRequest`` ends
the stream ``INVALID_ARGUMENT`` once the requests read before it are answered; the drain ends
it so too (``UNAVAILABLE``), as does a stream left idle for ``SERVE_KEEPALIVE_TIMEOUT_S``
(``DEADLINE_EXCEEDED``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .. import __version__, tracing
from ..codecs import v2
from ..dataplane.dataplane import DataPlane
from ..errors import DeadlineExceeded, InternalError, NotFound, NotReady, ServeError, bounded
from ..logs import new_request_id
from ..logs import request_id as current_request_id
from ..metrics import Metrics
from . import codec
from .errors import ERROR_CODE_KEY, Unimplemented, status_code
from .gate import REQUEST_ID_BYTES, meter
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
        self._streams: set[Stream] = set()

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
        return await self._infer(request, context)

    async def ModelStreamInfer(self, requests, context):
        stream = Stream(
            requests,
            lambda request: self._stream_request(request, context),
            self.settings.grpc_max_concurrent_streams,
            self.settings.grpc_max_message_bytes,
        )
        self._streams.add(stream)
        try:
            async for answer in stream.answers():
                yield answer
        finally:
            self._streams.discard(stream)

    def end_streams(self) -> None:
        """The drain: every stream stops reading, answers what it read, and ends."""
        for stream in list(self._streams):
            stream.end()

    async def _stream_request(self, request, context) -> pb.ModelStreamInferResponse:
        """One request of a stream, answered (its failure as the answer's ``error_message``)."""
        rid = request.id[:REQUEST_ID_BYTES]
        if rid and rid.isprintable():
            current_request_id.set(rid)
        elif not current_request_id.get():
            current_request_id.set(new_request_id())
        try:
            with meter(self.metrics, "ModelStreamInfer"):
                return pb.ModelStreamInferResponse(
                    infer_response=await self._infer(request, context)
                )
        except Exception as exc:
            if not isinstance(exc, ServeError):
                exc = InternalError.of(exc, "ModelStreamInfer", log)
            # For a client that reads the stream itself: the request's id, and what a unary
            # call's status and x-error-code trailer would have said.
            answer = pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            answer.parameters[ERROR_CODE_KEY].string_param = exc.code
            answer.parameters["grpc-status"].string_param = status_code(exc).name
            return pb.ModelStreamInferResponse(
                error_message=bounded(exc.message), infer_response=answer
            )

    async def _infer(self, request, context) -> pb.ModelInferResponse:
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


class Stream:
    """One ``ModelStreamInfer`` call: a reader that takes requests while earlier ones run,
    and the answers in the order the requests came.

    The reader stops while ``depth`` requests are in flight or their messages add up to
    ``budget`` bytes, so that a stream holds at most about what ``depth`` unary calls of the
    usual size would, and never more than ``budget`` plus the one message that crossed it.

    Args:
        requests: the parsed requests (the gate's reader: bounded, timed, parsed).
        answer: turns one request into its answer (never raises but on cancellation).
        depth: the most requests in flight.
        budget: the most bytes of request messages in flight before the reader waits.
    """

    def __init__(
        self,
        requests: AsyncIterator,
        answer: Callable[[Any], Awaitable[Any]],
        depth: int,
        budget: int,
    ):
        self.answer = answer
        self.depth = depth
        self.budget = budget
        self.count = 0
        self.held = 0
        self.room = asyncio.Event()
        # (the request's task, its size) in arrival order; None once the reader stopped.
        self.queue: asyncio.Queue[tuple[asyncio.Task, int] | None] = asyncio.Queue()
        self.ending = False
        self.reader = asyncio.ensure_future(self._read(requests))

    async def _read(self, requests: AsyncIterator) -> None:
        try:
            while True:
                while self.count >= self.depth or self.held >= self.budget:
                    self.room.clear()
                    await self.room.wait()
                request = await anext(requests, None)
                if request is None:
                    return
                size = request.ByteSize()
                self.count += 1
                self.held += size
                self.queue.put_nowait((asyncio.ensure_future(self.answer(request)), size))
        finally:
            self.queue.put_nowait(None)

    def end(self) -> None:
        """Read no more; the answers of what was read still go out, then :meth:`answers`
        raises ``NotReady`` (the drain). A stream whose client had already sent its last
        request ends as it would have."""
        if self.reader.done():
            return
        self.ending = True
        self.reader.cancel()

    async def answers(self) -> AsyncIterator[Any]:
        """Each request's answer; then what ended the reader (the client's half-close: none)."""
        try:
            while (entry := await self.queue.get()) is not None:
                task, size = entry
                answer = await task
                self.count -= 1
                self.held -= size
                self.room.set()
                yield answer
            if self.ending:
                raise NotReady(
                    "the server is draining: it reads no more requests on this stream; "
                    "open a new stream (on another connection) for the rest",
                    "draining",
                )
            await self.reader  # a message that did not parse, a stream left idle: its error
        finally:
            self.reader.cancel()
            if self.reader.done() and not self.reader.cancelled():
                self.reader.exception()  # retrieved: the stream ended before it was raised
            while not self.queue.empty():
                entry = self.queue.get_nowait()
                if entry is not None:
                    entry[0].cancel()


def _unimplemented(method: str, why: str) -> Callable[..., Awaitable[None]]:
    async def handler(self, request, context):
        raise Unimplemented(f"{method}: {why}")

    handler.__name__ = method
    return handler


_NOT_HERE = {
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
