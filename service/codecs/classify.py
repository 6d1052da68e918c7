"""The native protocol, ``POST /v1/classify`` (and ``/v1/jobs``): bodies in, answers out.

Bodies: one raw image (``image/*``, ``application/octet-stream``, or no Content-Type),
``multipart/form-data`` with one or more files (any field names) and an optional ``top_k``
field, or JSON ``{"images": [{"b64": "..."}], "top_k": 5}``. The answer is one list of top-k
predictions per image, in request order (:func:`answer`, also a finished job's result).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..dataplane.request import InferResult
from ..errors import InvalidInput, UnsupportedMediaType
from ..settings import Settings
from .common import decode_b64, parse_json, parse_top_k

RAW_TYPES = ("image/", "application/octet-stream")


# -- the JSON body ------------------------------------------------------------------------


class B64Image(BaseModel):
    model_config = ConfigDict(extra="forbid")
    b64: str = Field(description="The encoded image file (JPEG, PNG, WebP, ...), base64.")


class ClassifyJSON(BaseModel):
    """JSON body of ``POST /v1/classify``."""

    model_config = ConfigDict(extra="forbid")
    images: list[B64Image] = Field(min_length=1, description="Images, answered in this order.")
    top_k: int | None = Field(None, ge=1, le=1000, description="Classes per image (default 5).")
    pipeline: str | None = Field(
        None,
        max_length=64,
        description="A configured pipeline (GET /v1/pipelines); default: SERVE_PIPELINE.",
    )


# -- the answer (its schema, for OpenAPI) -------------------------------------------------


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


def answer(result: InferResult) -> dict[str, Any]:
    """The classify answer (``ClassifyResponse``) of a result."""
    return {
        "model": result.pipeline.model_name,
        "pipeline": result.pipeline.name,
        "predictions": [
            [{"label": p.label, "class_id": p.class_id, "score": p.score} for p in row]
            for row in result.predictions
        ],
        "timing": result.timing.as_dict(),
        "warnings": result.warnings,
    }


# -- bodies -------------------------------------------------------------------------------


@dataclass
class ImageBatch:
    """A classify-style body: its images, ``top_k`` and its other fields (``pipeline``, a job's
    ``callback_url``) as strings."""

    images: list[bytes]
    top_k: int
    options: dict[str, str] = field(default_factory=dict)


async def _replay(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def decode(
    body: bytes,
    content_type: str,
    query_top_k: str | None,
    settings: Settings,
    body_model: type[ClassifyJSON] = ClassifyJSON,
) -> ImageBatch:
    """The images, ``top_k`` and options of a classify-style body; raises ``InvalidInput`` or
    ``UnsupportedMediaType``. ``body_model`` validates JSON bodies (jobs add ``callback_url``)."""
    kind = content_type.lower()
    options: dict[str, str] = {}
    images: list[bytes]
    if kind.startswith("multipart/form-data"):  # the boundary is case-sensitive: pass it as is
        images, options, form_k = await _multipart(body, content_type, settings)
        k = parse_top_k(form_k or query_top_k, settings.default_top_k)
    elif kind.startswith("application/json"):
        raw = parse_json(body)
        try:
            parsed = body_model.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidInput(f"{where}: {first['msg']}", "invalid_request") from None
        images = [decode_b64(img.b64, f"images[{i}].b64") for i, img in enumerate(parsed.images)]
        extra = parsed.model_dump(exclude={"images", "top_k"}, exclude_none=True)
        options = {key: str(value) for key, value in extra.items()}
        k = parse_top_k(
            parsed.top_k if parsed.top_k is not None else query_top_k, settings.default_top_k
        )
    elif kind.startswith(RAW_TYPES) or not kind:
        images = [body]
        k = parse_top_k(query_top_k, settings.default_top_k)
    else:
        raise UnsupportedMediaType(
            f"Content-Type {kind!r} is not supported; send an image (image/jpeg, "
            "image/png, ...), multipart/form-data, or application/json"
        )
    if not images:
        raise InvalidInput("the request contains no image", "no_images")
    if len(images) > settings.max_images_per_request:
        raise InvalidInput(
            f"{len(images)} images in one request; the limit is {settings.max_images_per_request}",
            "too_many_images",
        )
    for i, data in enumerate(images):
        if not data:
            raise InvalidInput(f"image {i}: the image is empty (zero bytes)", "empty")
    return ImageBatch(images, k, options)


async def _multipart(
    body: bytes, content_type: str, settings: Settings
) -> tuple[list[bytes], dict[str, str], str | None]:
    """Files, text fields other than ``top_k``, and ``top_k`` of a multipart body."""
    parser = MultiPartParser(
        Headers({"content-type": content_type}),
        _replay(body),
        max_files=settings.max_images_per_request + 1,
        max_fields=settings.max_form_fields,
        max_part_size=settings.max_form_field_bytes,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidInput(
            f"malformed multipart body: {exc.message}", "invalid_multipart"
        ) from None
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        options = {
            key: value
            for key, value in form.multi_items()
            if isinstance(value, str) and key != "top_k"
        }
        images = [await u.read() for u in uploads]
        top_k = form.get("top_k")
        return images, options, top_k if isinstance(top_k, str) else None
    finally:
        await form.close()
