"""Every gRPC call's way in: the token, the request message read, bounded and parsed here.

gRPC's generated registration hands each method a parsed message, and answers a message that
does not parse ``UNKNOWN: Unexpected <class 'DecodeError'>``; a unary call whose stream ends
without its message is never answered at all. So every method of every service is registered
here instead, as a handler of the raw bytes (no deserializer) that:

1. checks the token (``api.auth``, the HTTP port's rules), unless the service is public
   (:data:`PUBLIC`: the health service, for probes), before its message is looked at;
2. waits at most ``SERVE_GRPC_MESSAGE_TIMEOUT_S`` for each request message (an incomplete
   call holds a stream; it is answered ``DEADLINE_EXCEEDED``), and answers
   ``INVALID_ARGUMENT`` to a unary call that ended without one;
3. bounds the message by method (:data:`SMALL_MESSAGE_BYTES` for everything but
   ``ModelInfer``, whose bound is ``SERVE_GRPC_MAX_MESSAGE_BYTES``, gRPC's transport limit);
4. parses it, answering ``INVALID_ARGUMENT`` with what was expected when it is not the
   method's protobuf;
5. calls the servicer, and maps the service's errors onto status codes (``errors.py``), with
   the stable reason in the ``x-error-code`` trailer and the message bounded
   (``service.errors.bounded``: messages quote client input). For a metered service, the
   request metrics (``route`` the method's name, ``status`` the gRPC status name,
   ``protocol="grpc"``): per call, or per request message for :data:`PER_MESSAGE` methods,
   whose servicer counts each one with :func:`meter` (and an error that ends such a call, as
   a message that does not parse, is one failure more).

A client-streaming method's first message is waited for as a unary call's; after it, the
stream may rest between messages for ``SERVE_KEEPALIVE_TIMEOUT_S`` (as an idle connection),
and is ended ``DEADLINE_EXCEEDED`` past that.

A unary call's one message is read and the call answered without waiting for the client to
half-close its side: what a client sends after its message is not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2

from .. import tracing
from ..auth import presented_token, token_matches
from ..errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    PayloadTooLarge,
    ServeError,
    Unauthorized,
    bounded,
)
from ..logs import new_request_id
from ..logs import request_id as current_request_id
from ..metrics import Metrics
from .errors import ERROR_CODE_KEY, status_code

log = logging.getLogger(__name__)

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Services answered without a token: probes carry none. Reflection is not among them: it hands
# out the whole schema of the service (docs/SECURITY.md).
PUBLIC = frozenset({HEALTH})
# The request of every method but ModelInfer is a name or two: larger ones are refused.
SMALL_MESSAGE_BYTES = 64 * 1024
# The method whose requests may be as large as SERVE_GRPC_MAX_MESSAGE_BYTES.
LARGE_METHODS = frozenset({"ModelInfer", "ModelStreamInfer"})
# Methods whose request messages are each a request of their own: the request metrics count
# them one by one (the servicer, with :func:`meter`), not the call that carries them.
PER_MESSAGE = frozenset({"ModelStreamInfer"})
REQUEST_ID_BYTES = 128


@dataclass(frozen=True)
class Limits:
    """Args:
    message_bytes: the largest request message of a :data:`LARGE_METHODS` method.
    message_timeout_s: the longest wait for a call's (first) request message.
    stream_idle_s: the longest wait for each later message of a client stream.
    """

    message_bytes: int
    message_timeout_s: float
    stream_idle_s: float


class Gate:
    """Builds the handlers of services whose servicers take parsed messages.

    Args:
        limits: the message bounds.
        tokens: accepted tokens; empty: no authentication.
        metrics: the front end's metrics (for metered services).
    """

    def __init__(self, limits: Limits, tokens: list[bytes], metrics: Metrics):
        self.limits = limits
        self.tokens = tokens
        self.metrics = metrics

    def service(
        self, descriptor: ServiceDescriptor, servicer: Any, metered: bool = False
    ) -> grpc.GenericRpcHandler:
        """The handlers of every method of ``descriptor``, answered by ``servicer``'s methods
        of the same names."""
        handlers = {
            method.name: self._handler(method, getattr(servicer, method.name), metered)
            for method in descriptor.methods
        }
        return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)

    def routes(
        self, descriptor: ServiceDescriptor, servicer: Any, metered: bool = False
    ) -> dict[bytes, Route]:
        """The same handlers for the native server (``native.py``), by their paths."""
        out = {}
        for method in descriptor.methods:
            call = _Call(self, method, getattr(servicer, method.name), metered)
            serialize = GetMessageClass(method.output_type).SerializeToString
            path = f"/{descriptor.full_name}/{method.name}".encode()
            out[path] = Route(method.name, call, method.server_streaming, serialize)
        return out

    def _handler(
        self, method: MethodDescriptor, fn: Callable[..., Any], metered: bool
    ) -> grpc.RpcMethodHandler:
        call = _Call(self, method, fn, metered)
        serialize = GetMessageClass(method.output_type).SerializeToString
        # Every method takes a stream of raw messages (a unary call is a stream of one), so
        # that the read, its bound and its timeout are this module's.
        if method.server_streaming:
            return grpc.stream_stream_rpc_method_handler(call.streaming, None, serialize)
        return grpc.stream_unary_rpc_method_handler(call.unary, None, serialize)


@dataclass(frozen=True)
class Route:
    """One method's handler, for the native server: ``call.unary`` or ``call.streaming``
    (``streaming``: the method answers a stream), and its answer's serializer."""

    name: str
    call: _Call
    streaming: bool
    serialize: Callable[[Any], bytes]


# Statuses that are the server's failure (their message carries the trace id, as a 5xx body).
SERVER_ERRORS = {"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS"}


class _Call:
    """One method's handler."""

    def __init__(self, gate: Gate, method: MethodDescriptor, fn: Callable[..., Any], metered: bool):
        self.gate = gate
        self.fn = fn
        self.name = method.name
        self.service = method.containing_service.full_name
        self.message = GetMessageClass(method.input_type)
        self.type_name = method.input_type.full_name
        self.client_streaming = method.client_streaming
        self.public = method.containing_service.full_name in PUBLIC
        self.traced = metered
        self.metered = metered and method.name not in PER_MESSAGE
        # Its requests are counted one by one; an error that ends the call is one failure more.
        self.per_message = metered and method.name in PER_MESSAGE
        self.limit = (
            gate.limits.message_bytes if method.name in LARGE_METHODS else SMALL_MESSAGE_BYTES
        )

    async def unary(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        async with self._accounted(context):
            return await self.fn(await self._argument(context), context)

    async def streaming(self, requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
        async with self._accounted(context):
            answers = self.fn(await self._argument(context), context)
            if inspect.isawaitable(answers):  # a method this server does not offer: it raises
                answers = await answers
            async for answer in answers:
                yield answer

    @contextlib.asynccontextmanager
    async def _accounted(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """One call's metrics and span around its body; what it raises becomes its status."""
        span = self._span(context)
        status = "OK"
        try:
            with meter(self.gate.metrics, self.name) if self.metered else contextlib.nullcontext():
                yield
        except BaseException as exc:
            status, reason = _outcome(exc)
            if self.per_message and isinstance(exc, Exception):
                self.gate.metrics.request_failure.labels(self.name, reason, "grpc").inc()
            await self._answer(exc, context, span)
            raise
        finally:
            if span is not None:
                tracing.grpc_done(span, status, getattr(grpc.StatusCode, status).value[0])

    # -- the steps ---------------------------------------------------------------------------

    def _span(self, context: grpc.aio.ServicerContext) -> tracing.RequestSpan | None:
        """The call's server span (traces on, a metered method), its parent from the
        caller's ``traceparent`` metadata."""
        if not (tracing.ENABLED and self.traced):
            return None
        return tracing.grpc_request(self.service, self.name, context.invocation_metadata() or ())

    async def _argument(self, context: grpc.aio.ServicerContext) -> Any:
        """What the servicer's method takes: the parsed request, or an iterator of them."""
        self._authenticate(context)
        if self.client_streaming:
            return self._messages(context)
        request = await self._first(context)
        if not current_request_id.get():
            rid = str(getattr(request, "id", ""))[:REQUEST_ID_BYTES]
            current_request_id.set(rid if rid.isprintable() and rid else new_request_id())
        return request

    def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        """The client's ``x-request-id`` taken, its token (if tokens are on) checked."""
        metadata = [
            (key.encode(), value.encode())
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)
        ]
        rid = next((v for k, v in metadata if k == b"x-request-id"), b"")[:REQUEST_ID_BYTES]
        text = rid.decode(errors="replace")
        current_request_id.set(text if text and text.isprintable() else None)
        if self.public or not self.gate.tokens:
            return
        token = presented_token(metadata)
        if token is None:
            raise Unauthorized(
                "authentication required: send the metadata "
                "'authorization: Bearer <token>' or 'x-api-key: <token>'"
            )
        if not token_matches(token, self.gate.tokens):
            raise Unauthorized("the token is not valid", "invalid_token")

    async def _read(self, context: grpc.aio.ServicerContext, later: bool = False) -> Message | None:
        """The next request message, parsed; None at the end of the client's stream.
        ``later``: a message after a stream's first, which may come after a rest."""
        limits = self.gate.limits
        timeout = limits.stream_idle_s if later else limits.message_timeout_s
        read_within = getattr(context, "read_within", None)  # the native server's: no task
        try:
            if read_within is not None:
                raw = await read_within(timeout)
            else:
                raw = await asyncio.wait_for(context.read(), timeout)
        except TimeoutError:
            if later:
                raise DeadlineExceeded(
                    f"the stream sent no complete request message for {timeout:g} s "
                    "(SERVE_KEEPALIVE_TIMEOUT_S); open a new one",
                    "stream_idle",
                ) from None
            raise DeadlineExceeded(
                f"no complete request message within {timeout:g} s (SERVE_GRPC_MESSAGE_TIMEOUT_S)",
                "message_timeout",
            ) from None
        if raw is grpc.aio.EOF or raw is None:
            return None
        if len(raw) > self.limit:
            raise PayloadTooLarge(
                f"the {self.name} request is {len(raw)} bytes; this method takes at most "
                f"{self.limit}",
                "message_too_large",
            )
        try:
            return self.message.FromString(raw)
        except Exception:  # DecodeError; any failure to parse the client's bytes is theirs
            raise InvalidInput(
                f"the request is not a valid {self.type_name} protobuf message "
                "(malformed wire format, or a string field that is not UTF-8)",
                "invalid_message",
            ) from None

    async def _first(self, context: grpc.aio.ServicerContext) -> Message:
        request = await self._read(context)
        # A client that resets its stream or drops its connection after the headers and before
        # its message also ends here: grpcio reports the end of the stream, and
        # ``context.cancelled()`` stays False, so the two cannot be told apart.
        if request is None:
            raise InvalidInput(
                f"the call ended without a complete request message ({self.type_name})",
                "missing_message",
            )
        return request

    async def _messages(self, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        later = False
        while (request := await self._read(context, later)) is not None:
            yield request
            later = True

    async def _answer(
        self,
        exc: BaseException,
        context: grpc.aio.ServicerContext,
        span: tracing.RequestSpan | None,
    ) -> None:
        """Aborts the call with ``exc``'s status (a cancellation, a closed stream or an abort
        passes as is). The server's own failures quote the trace id, as 5xx bodies do."""
        if not isinstance(exc, Exception) or isinstance(exc, grpc.aio.AbortError):
            return
        trace = f" (trace id {span.trace_id})" if span is not None else ""
        if not isinstance(exc, ServeError):
            exc = InternalError.of(exc, self.name, log)
        code = status_code(exc)
        message = bounded(exc.message)
        if code.name in SERVER_ERRORS:
            message += trace
        await context.abort(code, message, ((ERROR_CODE_KEY, exc.code),))


@contextlib.contextmanager
def meter(metrics: Metrics, route: str) -> Iterator[None]:
    """One request's metrics (``protocol="grpc"``): in flight, then its duration by status and
    its success or failure by reason; what the body raises passes on."""
    metrics.pending_requests.inc()
    start = time.perf_counter()
    status, reason = "OK", ""
    try:
        yield
    except BaseException as exc:
        status, reason = _outcome(exc)
        raise
    finally:
        metrics.pending_requests.dec()
        metrics.request_duration.labels(route, status, "grpc").observe(time.perf_counter() - start)
        if status == "OK":
            metrics.request_success.labels(route, "grpc").inc()
        else:
            metrics.request_failure.labels(route, reason, "grpc").inc()


def _outcome(exc: BaseException) -> tuple[str, str]:
    """The status and reason the metrics count for a call that raised ``exc``."""
    if not isinstance(exc, Exception):  # the client went away, or its deadline passed
        return "CANCELLED", "cancelled"
    if isinstance(exc, grpc.aio.AbortError):
        return "ABORTED", "aborted"
    if isinstance(exc, ServeError):
        return status_code(exc).name, exc.code
    return "INTERNAL", "internal_error"
