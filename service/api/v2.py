"""KServe V2 / Open Inference Protocol over HTTP: the routes (the codec is ``codecs/v2.py``).

Errors are ``{"error": "<message>"}`` with a 4xx/5xx status, as V2 clients expect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.routing import Match

from .. import __version__, tracing
from ..codecs import v2 as codec
from ..codecs import v2_inputs
from ..codecs.common import decompress
from ..dataplane.dataplane import DataPlane
from ..errors import NotFound
from .body import TIMEOUT_HEADER, read_body, timeout_s
from .deps import DataPlaneDep
from .errors import PLAIN, PlainErrorRoute, error_response

router = APIRouter(route_class=PlainErrorRoute, tags=["kserve-v2"])


def _model(plane: DataPlane, name: str, version: str | None) -> codec.Model:
    """The model this name picks; 404 in the protocol's own words for any other."""
    return codec.find_model(plane, name, version)


def _no(message: str, code: str) -> Response:
    """The protocol's "false" for a health question: 400."""
    return error_response(400, code, message, shape=PLAIN)


# -- health and metadata -------------------------------------------------------------------


@router.get("/v2", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions it supports."""
    return {"name": "resnet-serve", "version": __version__, "extensions": codec.EXTENSIONS}


@router.get("/v2/health/live", summary="Server live")
async def server_live(plane: DataPlaneDep) -> Response:
    """200 while the process can serve or is loading; 400 once model loading failed."""
    info = plane.fallback
    if info.state == "failed":
        return _no(f"the model failed to load: {info.error}", "model_failed")
    return JSONResponse({"live": True})


@router.get("/v2/health/ready", summary="Server ready")
async def server_ready(plane: DataPlaneDep) -> Response:
    """200 once the model is warmed; 400 (the protocol's "false") while loading or draining."""
    if plane.ready:
        return JSONResponse({"ready": True})
    return _no(f"the server is {plane.state}", "not_ready")


@router.get("/v2/models/{name}/ready", summary="Model ready")
@router.get("/v2/models/{name}/versions/{version}/ready", summary="Model version ready")
async def model_ready(plane: DataPlaneDep, name: str, version: str | None = None) -> Response:
    """200 when the model can infer; 400 while it loads or drains; 404 for an unknown model."""
    info = _model(plane, name, version).info
    if info.ready and not plane.draining:
        return JSONResponse({"name": name, "ready": True})
    return _no(f"model {name!r} is {info.state}", "not_ready")


@router.get("/v2/models/{name}", summary="Model metadata")
@router.get("/v2/models/{name}/versions/{version}", summary="Model version metadata")
async def model_metadata(
    plane: DataPlaneDep, name: str, version: str | None = None
) -> dict[str, Any]:
    """Inputs and outputs of the model, as tensor metadata."""
    return codec.model_metadata(_model(plane, name, version))


@router.get("/v2/models/{name}/config", summary="Model configuration (Triton)")
@router.get("/v2/models/{name}/versions/{version}/config", summary="Model version configuration")
async def model_config(
    plane: DataPlaneDep, name: str, version: str | None = None
) -> dict[str, Any]:
    """Triton's model configuration: batching limits and tensors (dims without the batch)."""
    return codec.model_config(_model(plane, name, version), plane.settings)


# -- inference -----------------------------------------------------------------------------


@router.post("/v2/models/{name}/infer", summary="Inference")
@router.post("/v2/models/{name}/versions/{version}/infer", summary="Inference on a version")
async def infer(
    name: str, request: Request, plane: DataPlaneDep, version: str | None = None
) -> Response:
    """Run encoded images (``images``) or pixel tensors (``pixels``) through the model."""
    headers = request.headers
    content, extra, media_type = await infer_answer(
        plane,
        name,
        version,
        lambda: read_body(request, plane.settings.max_body_bytes),
        headers.get("content-encoding"),
        headers.get(codec.HEADER_LENGTH),
        headers.get(TIMEOUT_HEADER),
    )
    return Response(content, media_type=media_type, headers=extra)


async def infer_answer(
    plane: DataPlane,
    name: str,
    version: str | None,
    read: Callable[[], Awaitable[bytes]],
    encoding: str | None,
    header_length: str | None,
    deadline: str | None,
) -> tuple[bytes, dict[str, str], str]:
    """An ``infer`` request's answer (body, extra headers, media type), for the route and for
    the fast path (``api/fast.py``): ``read`` reads the body; the other arguments are the
    request's Content-Encoding, Inference-Header-Content-Length and X-Request-Timeout-Ms."""
    settings = plane.settings
    model = _model(plane, name, version)
    plane.check_ready(model.info)  # before reading a large body
    body = decompress(await read(), encoding, settings.max_body_bytes)
    header, binary = v2_inputs.split_body(body, header_length)
    infer_request, want = v2_inputs.decode_request(
        header, binary, model, settings, timeout_s(deadline, settings)
    )
    result = await plane.infer(infer_request, model.info)
    with tracing.span("answer"):
        return codec.encode_response(
            name, header.get("id"), result.probabilities, want, result.pipeline.labels
        )


def infer_routes() -> tuple[object, object]:
    """The routes of ``infer`` without and with a version (the fast path labels its metrics
    with their templates)."""
    routes = [r for r in router.routes if getattr(r, "endpoint", None) is infer]
    plain = next(r for r in routes if "{version}" not in getattr(r, "path", ""))
    versioned = next(r for r in routes if "{version}" in getattr(r, "path", ""))
    return plain, versioned


# -- anything else under /v2 ---------------------------------------------------------------


@router.api_route(
    "/v2/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def not_found(path: str, request: Request) -> Response:
    """Unknown V2 paths and methods answer in the protocol's error shape; a 405 lists the
    path's methods in ``Allow``, which RFC 9110 (section 15.5.6) requires of it."""
    scope = {**request.scope, "method": request.method}
    allowed: set[str] = set()
    for route in router.routes:
        if getattr(route, "endpoint", None) is not_found:
            continue
        match, _ = route.matches(scope)
        if match == Match.PARTIAL:
            allowed |= getattr(route, "methods", None) or set()
    if allowed:
        return error_response(
            405,
            "http_405",
            f"method {request.method} not allowed on {request.url.path}",
            {"Allow": ", ".join(sorted(allowed))},
            shape=PLAIN,
        )
    raise NotFound(f"no route {request.method} {request.url.path}")
