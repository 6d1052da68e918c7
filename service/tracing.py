"""OpenTelemetry traces of requests, off unless the standard ``OTEL_*`` variables ask for them.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or an OTLP endpoint
is set (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and
``OTEL_SDK_DISABLED`` is not ``true``. Everything else is the SDK's own reading of the
variables: ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the default, or ``grpc``),
headers, timeouts, ``OTEL_TRACES_SAMPLER`` (``parentbased_always_on`` by default: a client's
``traceparent`` decides), ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_BSP_*``. The SDK and exporters are the ``otel`` extra; without them the variables only
earn a warning.

Each request is one server span (HTTP: ``POST /v1/classify``; gRPC:
``inference.GRPCInferenceService/ModelInfer``) whose parent is the caller's W3C
``traceparent``, with child spans ``read body``, ``decode``, ``queue wait``, ``inference`` and
``answer``. Queue wait and inference happen in the accelerator process: their spans are placed
from the durations the batch reports (``BatchInfo``), ending when the item's answer came back.
The accelerator records one ``batch`` span per executed batch, linked to the spans of the
requests whose items it carried (:func:`batch_span`, fed by :func:`traceparent` strings).

Off, the request path pays one module attribute read per hook (``ENABLED``) and nothing is
allocated: :func:`span` then returns the same no-op context manager every time.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

ENABLED = False
_tracer: Any = None
_provider: Any = None
_NOOP = contextlib.nullcontext()

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# gRPC status names a server span marks as an error (OpenTelemetry RPC conventions).
_GRPC_SERVER_ERRORS = {
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
}


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Start exporting traces if the environment asks for them (once per process)."""
    global ENABLED, _tracer, _provider
    if _provider is not None or not wanted(env):
        return ENABLED
    env = os.environ if env is None else env
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* variables ask for traces, but the otel extra is not installed")
        return False
    names = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "resnet-serve"}))
    provider = TracerProvider(resource=resource)
    for name in (n.strip() for n in names.split(",")):
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    _provider = provider
    _tracer = provider.get_tracer("service.tracing")
    ENABLED = True
    log.info("traces on: %s", names)
    return True


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: this service exports otlp or console")
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    else:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: http/protobuf or grpc")
    return OTLPSpanExporter()


def shutdown() -> None:
    """Export what is left (at the end of a process)."""
    global ENABLED, _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    ENABLED, _tracer, _provider = False, None, None


# -- the request's span ---------------------------------------------------------------------


class RequestSpan:
    """A request's server span, current until :meth:`end` (in this task and its children)."""

    def __init__(self, name: str, carrier: dict[str, str], attributes: dict[str, Any]):
        from opentelemetry import context
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(carrier) if carrier else None
        self.span = _tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        self._token = context.attach(set_span_in_context(self.span))
        self.trace_id = format(self.span.get_span_context().trace_id, "032x")

    def end(self, name: str | None, attributes: dict[str, Any], error: bool) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        if name:
            self.span.update_name(name)
        self.span.set_attributes(attributes)
        if error:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
        with contextlib.suppress(ValueError):  # ended in another context than it began
            context.detach(self._token)


def http_request(scope: Mapping[str, Any]) -> RequestSpan:
    """The server span of an HTTP request (ASGI ``scope``), its parent from its headers."""
    carrier = {}
    for key, value in scope.get("headers", ()):
        if key in (b"traceparent", b"tracestate"):
            carrier[key.decode()] = value.decode("latin-1")
    method = scope.get("method", "")
    return RequestSpan(
        method,
        carrier,
        {
            "http.request.method": method,
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", ""),
        },
    )


def http_done(span: RequestSpan, method: str, route: str, status: int) -> None:
    span.end(
        f"{method} {route}",
        {"http.route": route, "http.response.status_code": status},
        status >= 500,
    )


def grpc_request(service: str, method: str, metadata: Iterable[tuple[str, Any]]) -> RequestSpan:
    """The server span of a gRPC call, its parent from the call's metadata."""
    carrier = {k: v for k, v in metadata if k in (TRACEPARENT, TRACESTATE) and isinstance(v, str)}
    return RequestSpan(
        f"{service}/{method}",
        carrier,
        {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
    )


def grpc_done(span: RequestSpan, status: str, code: int) -> None:
    span.end(None, {"rpc.grpc.status_code": code}, status in _GRPC_SERVER_ERRORS)


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), or None (traces off, or no span)."""
    if not ENABLED:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def traceparent() -> str | None:
    """The current span as a W3C ``traceparent`` (to carry with an item to the accelerator
    process), or None when traces are off."""
    if not ENABLED:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


# -- child spans ------------------------------------------------------------------------------


def span(name: str) -> Any:
    """A child span of the current one around a block (``with tracing.span("decode"):``);
    the same no-op context manager when traces are off."""
    if not ENABLED:
        return _NOOP
    return _tracer.start_as_current_span(name)


def now_ns() -> int:
    """A span timestamp (nanoseconds, Unix epoch); 0 when traces are off."""
    if not ENABLED:
        return 0
    import time

    return time.time_ns()


def batch_spans(answered_ns: int, queue_s: float, compute_s: float, batch_size: int) -> None:
    """``queue wait`` then ``inference`` children of the current span, from an item's batch
    timings, ending when its answer came back (``answered_ns``)."""
    if not ENABLED:
        return
    compute_ns = int(compute_s * 1e9)
    start_compute = answered_ns - compute_ns
    start_queue = start_compute - int(queue_s * 1e9)
    wait = _tracer.start_span("queue wait", start_time=start_queue)
    wait.end(end_time=start_compute)
    run = _tracer.start_span(
        "inference", start_time=start_compute, attributes={"batch.size": batch_size}
    )
    run.end(end_time=answered_ns)


# -- the accelerator process ------------------------------------------------------------------


def batch_span(
    links: Sequence[str | None],
    pipeline: str,
    stage: str,
    batch_size: int,
    padded_size: int,
    start_ns: int,
    end_ns: int,
) -> None:
    """One executed batch, in the accelerator process: a span of its own (a root: the batch
    serves many requests) linked to the span of each request whose item it carried.

    Args:
        links: each item's :func:`traceparent` (None: that item was not traced).
        start_ns, end_ns: the batch's execution, ``time.time_ns()``.
    """
    if not ENABLED:
        return
    from opentelemetry.trace import Link, get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    found = []
    for parent in links:
        if parent:
            ctx = get_current_span(propagator.extract({TRACEPARENT: parent})).get_span_context()
            if ctx.is_valid:
                found.append(Link(ctx))
    run = _tracer.start_span(
        f"batch {pipeline}/{stage}",
        context=_root(),
        links=found,
        start_time=start_ns,
        attributes={
            "batch.size": batch_size,
            "batch.padded_size": padded_size,
            "pipeline": pipeline,
            "stage": stage,
        },
    )
    run.end(end_time=end_ns)


def _root() -> Any:
    from opentelemetry.context import Context

    return Context()
