"""Reading and validating request bodies: raw image, multipart form, or JSON with base64.

Limits are enforced while the body streams in, before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..settings import Settings
from .errors import ApiError

RAW_TYPES = ("image/", "application/octet-stream")
# The client's deadline in milliseconds, capped by SERVE_REQUEST_TIMEOUT_S.
TIMEOUT_HEADER = "X-Request-Timeout-Ms"


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


@dataclass
class ImageBatch:
    images: list[bytes]
    top_k: int
    # The body's other fields (``pipeline``, a job's ``callback_url``), as strings.
    options: dict[str, str] = field(default_factory=dict)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_content_length", "Content-Length is not a number") from None
        if size > limit:
            raise ApiError(
                413, "payload_too_large", f"the body is {size} bytes; the limit is {limit}"
            )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "payload_too_large", f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def request_timeout_s(request: Request, settings: Settings) -> float:
    """The request's deadline in seconds: the client's header, capped by the server's setting."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None or not raw.strip():
        return settings.request_timeout_s
    try:
        ms = float(raw)
    except ValueError:
        ms = float("nan")
    if not ms > 0 or ms == float("inf"):
        raise ApiError(
            400,
            "invalid_timeout",
            f"{TIMEOUT_HEADER} must be a positive number of milliseconds",
        )
    return min(ms / 1000.0, settings.request_timeout_s)


def parse_top_k(value: object, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        k = int(str(value))
    except ValueError:
        shown = str(value)[:32]  # never echo a large field back
        raise ApiError(400, "invalid_top_k", f"top_k must be an integer, got {shown!r}") from None
    if not 1 <= k <= 1000:
        raise ApiError(400, "invalid_top_k", f"top_k must be between 1 and 1000, got {k}")
    return k


def decode_b64(text: str, index: int) -> bytes:
    if text.startswith("data:") and "," in text:  # data URLs from browsers
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"images[{index}].b64 is not valid base64") from None


async def _replay(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def parse_images(
    request: Request, settings: Settings, body_model: type[ClassifyJSON] = ClassifyJSON
) -> ImageBatch:
    """Extract the images and ``top_k`` of a classify-style request, or raise ``ApiError``.

    ``body_model`` validates JSON bodies (``POST /v1/jobs`` adds ``callback_url``); its fields
    other than ``images`` and ``top_k``, and a multipart body's text fields, land in
    ``ImageBatch.options``.
    """
    options: dict[str, str] = {}
    content_type = request.headers.get("content-type", "").lower()
    query_k = request.query_params.get("top_k")
    body = await read_body(request, settings.max_body_bytes)
    images: list[bytes]
    if content_type.startswith("multipart/form-data"):
        parser = MultiPartParser(
            request.headers,
            _replay(body),
            max_files=settings.max_images_per_request + 1,
            max_fields=settings.max_form_fields,
            max_part_size=settings.max_form_field_bytes,
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ApiError(
                400, "invalid_multipart", f"malformed multipart body: {exc.message}"
            ) from None
        try:
            uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            options = {
                key: value
                for key, value in form.multi_items()
                if isinstance(value, str) and key != "top_k"
            }
            images = [await u.read() for u in uploads]
            k = parse_top_k(form.get("top_k") or query_k, settings.default_top_k)
        finally:
            await form.close()
    elif content_type.startswith("application/json"):
        try:
            raw = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        try:
            parsed = body_model.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ApiError(400, "invalid_request", f"{where}: {first['msg']}") from None
        images = [decode_b64(img.b64, i) for i, img in enumerate(parsed.images)]
        extra = parsed.model_dump(exclude={"images", "top_k"}, exclude_none=True)
        options = {key: str(value) for key, value in extra.items()}
        k = parse_top_k(
            parsed.top_k if parsed.top_k is not None else query_k, settings.default_top_k
        )
    elif content_type.startswith(RAW_TYPES) or not content_type:
        images = [body]
        k = parse_top_k(query_k, settings.default_top_k)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type!r} is not supported; send an image (image/jpeg, "
            "image/png, ...), multipart/form-data, or application/json",
        )
    if not images:
        raise ApiError(400, "no_images", "the request contains no image")
    if len(images) > settings.max_images_per_request:
        raise ApiError(
            400,
            "too_many_images",
            f"{len(images)} images in one request; the limit is {settings.max_images_per_request}",
        )
    for i, data in enumerate(images):
        if not data:
            raise ApiError(400, "empty", f"image {i}: the image is empty (zero bytes)")
    return ImageBatch(images, k, options)
