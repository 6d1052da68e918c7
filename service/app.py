"""The FastAPI application factory and its lifecycle.

The server starts answering at once: ``/healthz`` is live while the model loads in the
background, and ``/readyz`` turns 200 only after every batch bucket is warmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__, tracing
from .api import classify, errors, health, tfserving, v2, web
from .api import jobs as jobs_api
from .api import pipelines as pipelines_api
from .api.auth import AuthMiddleware
from .api.body import TIMEOUT_HEADER
from .api.fast import FastPaths
from .api.middleware import MetricsMiddleware
from .auth import load_tokens
from .codecs.classify import B64Image, ClassifyJSON
from .dataplane.admission import Bound
from .dataplane.dataplane import DataPlane, Engine
from .jobs.record import JobStore
from .jobs.runner import JobRunner, make_store
from .metrics import Metrics
from .preprocess.decoder import Decoder
from .settings import Settings

if TYPE_CHECKING:
    from .model.loader import LoadedModel

log = logging.getLogger(__name__)

ROUTERS = [
    health.router,
    classify.router,
    pipelines_api.router,
    jobs_api.router,
    v2.router,
    tfserving.router,
    web.router,
]


class ServeApp(FastAPI):
    """The application: the service's own ASGI layers (CORS, request ids and metrics,
    authentication, the fast paths of raw-image classify and V2 infer) around the framework,
    which only the requests the fast paths do not answer enter, so the framework's own wrappers
    (its server-error and exception middleware, body limits, telemetry) cost those requests
    nothing."""

    layers: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await (self.layers or self.framework)(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    model_factory: Callable[[], LoadedModel] | None = None,
    metrics: Metrics | None = None,
    engine: Engine | None = None,
    admission: Bound | None = None,
    job_store: JobStore | None = None,
    job_workers: int | None = None,
    grpc_port: int = 0,
) -> ServeApp:
    """Build the application.

    By default everything is in this process: the pipelines (a ``PipelineRegistry``), the
    admission bound, the job store. A front-end process of the pod passes its client of the
    accelerator process, the pod's admission bound and the pod's job store instead.

    Args:
        settings: configuration; read from the environment when omitted.
        model_factory: builds the model (tests pass a tiny one); default: ``SERVE_MODEL``.
        metrics: metrics registry; a fresh one when omitted.
        engine: runs items through the stages after decode; default: the pipelines, here.
        admission: the bound of images in flight; default: this process's.
        job_store: where jobs wait; default: ``SERVE_REDIS_URL``'s, else in memory.
        job_workers: jobs this process runs at once; default: ``SERVE_JOB_CONCURRENCY``.
        grpc_port: serve KServe V2 over gRPC on this port too, from the same dataplane
            (a front-end process passes ``SERVE_GRPC_PORT``); 0: HTTP only.
    """
    settings = settings or Settings()
    tracing.configure()  # OTEL_* variables; off without them
    metrics = metrics or Metrics()
    local = engine is None
    if engine is None:  # one process: the pipelines load here (tests, notebooks)
        from .engine.registry import PipelineRegistry

        engine = PipelineRegistry(settings, metrics, model_factory)
    decoder = Decoder(
        niceness=settings.preprocess_nice, inline_pixels=settings.inline_decode_pixels
    )
    plane = DataPlane(settings, engine, decoder, metrics, admission)
    jobs = JobRunner(job_store or make_store(settings), plane, settings, metrics, job_workers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if local:  # the models load here: their backend too
            from .model.backends import select

            select(settings.backend)
        if settings.strict:  # refuse to start before anything is loaded
            from .model.loader import check_weights

            check_weights(settings.model, settings.weights)
        grpc_server = None
        if grpc_port:
            from .grpc.server import GrpcServer

            grpc_server = GrpcServer(plane, metrics, grpc_port)
            await grpc_server.start()
            plane.on_drain.append(grpc_server.drain)
        await jobs.start()
        loading = asyncio.create_task(_start(engine), name="engine-start")
        app.state.loading = loading
        ticking = asyncio.create_task(_tick(metrics), name="metrics-refresh")
        try:
            yield
        finally:
            plane.drain()
            if grpc_server is not None:
                await grpc_server.stop()
            await jobs.stop()
            for task in (loading, ticking):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await engine.stop()
            decoder.close()

    app = ServeApp(
        title="resnet-serve",
        version=__version__,
        description="Keras ResNet image classification with pipelined preprocessing and "
        "dynamic batching.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.dataplane = plane
    app.state.jobs = jobs
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    # Outermost first: CORS (answers preflights) > metrics and request id > authentication >
    # the raw-image classify and V2 infer requests (api/fast.py) > the framework.
    layers: ASGIApp = FastPaths(
        app.framework, plane=plane, route=classify.route(), v2_routes=v2.infer_routes()
    )
    tokens = load_tokens(settings)
    if tokens:
        layers = AuthMiddleware(layers, tokens=tokens, exempt_paths=settings.auth_exempt_paths)
        log.info("authentication on: %d token(s)", len(tokens))
    layers = MetricsMiddleware(
        layers,
        metrics=metrics,
        access_log=settings.access_log,
        draining=lambda: plane.draining,
        retry_after_s=settings.retry_after_s,
    )
    if settings.cors_origins:
        layers = CORSMiddleware(
            layers,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],  # DELETE: cancelling a job
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "X-Request-Id",
                TIMEOUT_HEADER,
            ],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
    app.layers = layers
    _declare_body_schemas(app)
    return app


async def _tick(metrics: Metrics) -> None:
    """With several processes, this one's computed gauges reach the pod's scrape this way."""
    while metrics.multiprocess:
        metrics.refresh()
        await asyncio.sleep(1.0)


async def _start(engine: Engine) -> None:
    """Load the pipelines here, or connect to the process that has them."""
    try:
        await engine.start()
    except asyncio.CancelledError:
        raise
    except Exception:  # state is "failed": /healthz turns 503 and the kubelet restarts the pod
        log.critical("model loading failed; /healthz now reports 503")


def _declare_body_schemas(app: FastAPI) -> None:
    """Add the JSON body models referenced by hand-written request bodies to the schema."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ClassifyJSON, B64Image):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in body.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components[model.__name__] = body
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
