"""``POST /v1/classify``: read the body, decode it (``codecs/classify.py``), ask the dataplane."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from .. import tracing
from ..codecs import classify as codec
from ..dataplane.dataplane import DataPlane
from ..dataplane.request import InferRequest
from ..errors import InvalidInput
from ..pipeline.info import PipelineInfo
from .body import TIMEOUT_HEADER, read_body, request_timeout_s

router = APIRouter(tags=["classify"])
PATH = "/v1/classify"
# The longest pipeline name a query may carry (longer: 422 from the route's validation).
PIPELINE_NAME_MAX = 64

_IMAGE = {"schema": {"type": "string", "format": "binary"}}
CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body, several as multipart/form-data (any field "
        "names; an optional `top_k` field), or JSON with base64 images.",
        "content": {
            "image/jpeg": _IMAGE,
            "image/png": _IMAGE,
            "image/webp": _IMAGE,
            "application/octet-stream": _IMAGE,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        "top_k": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    "required": ["images"],
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/ClassifyJSON"}},
        },
    },
    "parameters": [
        {
            "name": TIMEOUT_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "number", "exclusiveMinimum": 0},
            "description": "The client's deadline in milliseconds, capped by "
            "SERVE_REQUEST_TIMEOUT_S; work still queued when it passes is dropped (504).",
        },
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
            "description": "Classes per image (default SERVE_DEFAULT_TOP_K).",
        },
    ],
}

ERRORS = {
    400: {"description": "Bad input: not an image, corrupt, empty, too many pixels or images."},
    401: {"description": "Authentication is on and no valid token was sent."},
    413: {"description": "Body over SERVE_MAX_BODY_BYTES."},
    415: {"description": "Unsupported Content-Type."},
    503: {"description": "Not ready, draining, or at capacity; see Retry-After."},
    504: {"description": "The request's deadline passed."},
}


@router.post(
    PATH,
    response_model=codec.ClassifyResponse,
    openapi_extra=CLASSIFY_BODY,
    responses=ERRORS,  # type: ignore[arg-type]
    summary="Classify one or more images",
)
async def classify(
    request: Request,
    pipeline: str | None = Query(
        None,
        max_length=PIPELINE_NAME_MAX,
        description="A configured pipeline (default SERVE_PIPELINE).",
    ),
) -> JSONResponse:
    """Top-k ImageNet classes for each image of the request, in request order."""
    return await classify_with(request, pipeline)


async def classify_with(request: Request, name: str | None) -> JSONResponse:
    """Classify with the pipeline ``name`` (path or query) or the body's ``pipeline`` field."""
    plane: DataPlane = request.app.state.dataplane
    settings = plane.settings
    checked = plane.check(name)  # before reading a large body
    timeout = request_timeout_s(request, settings)
    body = await read_body(request, settings.max_body_bytes)
    content_type = request.headers.get("content-type", "")
    answer = await classify_body(
        plane, checked, name, body, content_type, request.query_params.get("top_k"), timeout
    )
    return JSONResponse(answer)


async def classify_body(
    plane: DataPlane,
    checked: PipelineInfo,
    name: str | None,
    body: bytes,
    content_type: str,
    top_k: str | None,
    timeout: float,
) -> dict:
    """The classify answer for a body that has been read (here and in ``fast.py``);
    ``checked``: the pipeline ``name`` picked, checked before the body was read."""
    batch = await codec.decode(body, content_type, top_k, plane.settings)
    named = batch.options.get("pipeline")
    if named and name and named != name:
        raise InvalidInput(f"the URL names {name!r} but the body {named!r}", "conflicting_pipeline")
    request = InferRequest(named or name, batch.images, top_k=batch.top_k, timeout_s=timeout)
    # A pipeline named by the body alone was not the one checked: the dataplane looks it up.
    result = await plane.infer(request, None if named and not name else checked)
    with tracing.span("answer"):
        return codec.answer(result)


def route() -> object:
    """This router's route of ``PATH`` (the fast path labels its metrics with it)."""
    return next(r for r in router.routes if getattr(r, "path", "") == PATH)
