"""``POST /v1/classify``: validate, hand the images to the pipeline, shape the answer."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from .deps import SettingsDep, find_pipeline
from .errors import ApiError
from .inputs import ClassifyJSON, parse_images, request_timeout_s
from .pipeline_errors import pipeline_errors

router = APIRouter(tags=["classify"])


class PredictionOut(BaseModel):
    label: str = Field(description="Human-readable class name.")
    class_id: int = Field(description="Index of the class in the model's output.")
    score: float = Field(description="Softmax probability.")


class TimingOut(BaseModel):
    preprocess_ms: float = Field(description="Longest decode+resize of the request's images.")
    queue_ms: float = Field(description="Longest wait in the batcher's queue.")
    inference_ms: float = Field(description="Longest model execution among its batches.")
    total_ms: float = Field(description="Time in the pipeline, end to end.")
    batch_sizes: list[int] = Field(description="Size of the batch each image ran in.")


class ClassifyResponse(BaseModel):
    model: str
    pipeline: str = Field("default", description="The pipeline that answered.")
    predictions: list[list[PredictionOut]] = Field(
        description="One list per image, in request order, best class first."
    )
    timing: TimingOut
    warnings: list[str] = Field(description="E.g. that the model runs with random weights.")


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
            "name": "X-Request-Timeout-Ms",
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


def model_warnings(pipeline) -> list[str]:
    loaded = pipeline.loaded
    if loaded is None:
        return []
    if loaded.random_weights:
        return ["RANDOM WEIGHTS: the model is not trained; predictions are meaningless"]
    return []


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    openapi_extra=CLASSIFY_BODY,
    responses=ERRORS,  # type: ignore[arg-type]
    summary="Classify one or more images",
)
async def classify(
    request: Request,
    settings: SettingsDep,
    pipeline: str | None = Query(
        None, max_length=64, description="A configured pipeline (default SERVE_PIPELINE)."
    ),
) -> ClassifyResponse:
    """Top-k ImageNet classes for each image of the request, in request order."""
    return await classify_with(request, settings, pipeline)


async def classify_with(request: Request, settings, name: str | None) -> ClassifyResponse:
    """Classify with the pipeline ``name`` (path or query) or the body's ``pipeline`` field."""
    pipeline = find_pipeline(request, name)
    with pipeline_errors(settings.retry_after_s):
        pipeline.check_ready()  # before reading a large body
    timeout_s = request_timeout_s(request, settings)
    batch = await parse_images(request, settings)
    named = batch.options.get("pipeline")
    if named and name and named != name:
        raise ApiError(
            400, "conflicting_pipeline", f"the URL names {name!r} but the body {named!r}"
        )
    if named:
        pipeline = find_pipeline(request, named)
    with pipeline_errors(settings.retry_after_s):
        result = await pipeline.classify(batch.images, batch.top_k, timeout_s=timeout_s)
    return ClassifyResponse(
        model=settings.model_name if pipeline.name == "default" else pipeline.name,
        pipeline=pipeline.name,
        predictions=[[PredictionOut(**p.__dict__) for p in row] for row in result.predictions],
        timing=TimingOut(**result.timing.as_dict()),  # type: ignore[arg-type]
        warnings=model_warnings(pipeline),
    )


# Referenced by the OpenAPI body above.
__all__ = ["router", "ClassifyJSON"]
