"""TensorFlow Serving's REST API: the routes (the codec is ``codecs/tfserving.py``).

Errors are ``{"error": "<message>"}``, as TensorFlow Serving's clients expect.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from .. import tracing
from ..codecs import tfserving as codec
from ..codecs.common import protocol_model
from ..dataplane.dataplane import DataPlane
from ..errors import InvalidInput
from ..pipeline.info import PipelineInfo
from .body import read_body, request_timeout_s
from .deps import DataPlaneDep
from .errors import PlainErrorRoute

router = APIRouter(route_class=PlainErrorRoute, tags=["tensorflow-serving"])


def _model(plane: DataPlane, name: str, version: str | None) -> PipelineInfo:
    """The pipeline this model name picks; 404 in the protocol's own words for any other."""
    return protocol_model(plane, name, version, **codec.NOT_FOUND)


@router.get("/v1/models/{name}", summary="Model status (TensorFlow Serving)")
@router.get("/v1/models/{name}/versions/{version}", summary="Model version status")
async def model_status(
    plane: DataPlaneDep, name: str, version: str | None = None
) -> dict[str, Any]:
    """The model's version and its state: START, LOADING, AVAILABLE, UNLOADING or END."""
    return codec.model_status(_model(plane, name, version))


@router.get("/v1/models/{name}/metadata", summary="Model metadata (TensorFlow Serving)")
@router.get("/v1/models/{name}/versions/{version}/metadata", summary="Model version metadata")
async def model_metadata(
    plane: DataPlaneDep, name: str, version: str | None = None
) -> dict[str, Any]:
    """The signature definitions: inputs, outputs and method of each signature."""
    return codec.model_metadata(name, _model(plane, name, version))


@router.post("/v1/models/{name}:{method}", summary="Predict (TensorFlow Serving)")
@router.post("/v1/models/{name}/versions/{version}:{method}", summary="Predict on a version")
async def predict(
    name: str, method: str, request: Request, plane: DataPlaneDep, version: str | None = None
) -> dict[str, Any]:
    """``:predict`` with ``{"instances": [...]}`` (row) or ``{"inputs": ...}`` (columnar)."""
    settings = plane.settings
    info = _model(plane, name, version)
    if method != "predict":
        raise InvalidInput(
            f"method :{method} is not supported; this model serves :predict", "invalid_argument"
        )
    plane.check_ready(info)  # before reading a large body
    body = await read_body(request, settings.max_body_bytes)
    infer_request, row = codec.decode_predict(
        body, info, settings, request_timeout_s(request, settings)
    )
    result = await plane.infer(infer_request, info)
    with tracing.span("answer"):
        return codec.encode_predict(result.probabilities, row)
