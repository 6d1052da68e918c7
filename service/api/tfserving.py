"""TensorFlow Serving's REST API: model status, metadata, and ``:predict``.

Two signatures, each with one output ``probabilities`` (``DT_FLOAT [-1, classes]``):

* ``serving_default``: input ``image_bytes`` (``DT_STRING [-1]``), encoded image files as
  ``{"b64": "..."}``, decoded by the preprocessing pool;
* ``serving_pixels``: input ``images`` (``DT_FLOAT [-1, H, W, 3]``), RGB values 0..255 at
  the model's input size, which skip the decode stage.

Either signature accepts either form, told apart by the value (``{"b64": ...}`` or a nested
list of numbers), so a client written for a Keras model exported with float inputs and one
written for a string-input export both work. Requests come in TensorFlow Serving's row
(``"instances"``) or columnar (``"inputs"``) form and are answered ``{"predictions": ...}`` or
``{"outputs": ...}``; errors are ``{"error": "<message>"}``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from ..pipeline.pipeline import Pipeline
from .deps import SettingsDep, protocol_model
from .errors import ApiError
from .inputs import decode_b64, read_body, request_timeout_s
from .pipeline_errors import pipeline_errors
from .plain_errors import PlainErrorRoute

router = APIRouter(route_class=PlainErrorRoute, tags=["tensorflow-serving"])

VERSION = "1"
DEFAULT_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serving_pixels"
BYTES_INPUT = "image_bytes"
PIXELS_INPUT = "images"
OUTPUT = "probabilities"
SIGNATURE_INPUTS = {DEFAULT_SIGNATURE: BYTES_INPUT, PIXELS_SIGNATURE: PIXELS_INPUT}

_STATES = {
    "created": "START",
    "loading": "LOADING",
    "ready": "AVAILABLE",
    "draining": "UNLOADING",
    "stopped": "END",
    "failed": "END",
}


def _bad(message: str, code: str = "invalid_argument") -> ApiError:
    return ApiError(400, code, message)


def _check_model(request: Request, name: str, version: str | None) -> Pipeline:
    """The pipeline this model name picks; 404 in the protocol's own words for any other."""
    return protocol_model(
        request,
        name,
        version,
        available=VERSION,
        unknown_model="Servable not found for request: Latest({name}); this server serves {served}",
        unknown_version=(
            "Servable not found for request: Specific({name}, {version}); "
            "available version: {available}"
        ),
    )


@router.get("/v1/models/{name}", summary="Model status (TensorFlow Serving)")
@router.get("/v1/models/{name}/versions/{version}", summary="Model version status")
async def model_status(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    """The model's version and its state: START, LOADING, AVAILABLE, UNLOADING or END."""
    pipeline = _check_model(request, name, version)
    failed = pipeline.state == "failed"
    return {
        "model_version_status": [
            {
                "version": VERSION,
                "state": _STATES.get(pipeline.state, "UNKNOWN"),
                "status": {
                    "error_code": "UNKNOWN" if failed else "OK",
                    "error_message": (pipeline.error or "") if failed else "",
                },
            }
        ]
    }


def _tensor_info(dtype: str, dims: list[int], name: str) -> dict[str, Any]:
    return {
        "dtype": dtype,
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in dims],
            "unknown_rank": False,
        },
        "name": name,
    }


@router.get("/v1/models/{name}/metadata", summary="Model metadata (TensorFlow Serving)")
@router.get("/v1/models/{name}/versions/{version}/metadata", summary="Model version metadata")
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    """The signature definitions: inputs, outputs and method of each signature."""
    pipeline = _check_model(request, name, version)
    height, width = pipeline.loaded.input_size if pipeline.loaded else (224, 224)
    classes = pipeline.loaded.num_classes if pipeline.loaded else 1000
    output = {OUTPUT: _tensor_info("DT_FLOAT", [-1, classes], f"{OUTPUT}:0")}
    inputs = {
        DEFAULT_SIGNATURE: {BYTES_INPUT: _tensor_info("DT_STRING", [-1], f"{BYTES_INPUT}:0")},
        PIXELS_SIGNATURE: {
            PIXELS_INPUT: _tensor_info("DT_FLOAT", [-1, height, width, 3], f"{PIXELS_INPUT}:0")
        },
    }
    return {
        "model_spec": {"name": name, "signature_name": "", "version": VERSION},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    signature: {
                        "inputs": signature_inputs,
                        "outputs": output,
                        "method_name": "tensorflow/serving/predict",
                    }
                    for signature, signature_inputs in inputs.items()
                }
            }
        },
    }


@router.post("/v1/models/{name}:{method}", summary="Predict (TensorFlow Serving)")
@router.post("/v1/models/{name}/versions/{version}:{method}", summary="Predict on a version")
async def predict(
    name: str,
    method: str,
    request: Request,
    settings: SettingsDep,
    version: str | None = None,
) -> dict[str, Any]:
    """``:predict`` with ``{"instances": [...]}`` (row) or ``{"inputs": ...}`` (columnar)."""
    pipeline = _check_model(request, name, version)
    if method != "predict":
        raise _bad(f"method :{method} is not supported; this model serves :predict")
    with pipeline_errors(settings.retry_after_s):
        pipeline.check_ready()  # before reading a large body
    body = await read_body(request, settings.max_body_bytes)
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(f"JSON Parse error: {exc}") from None
    if not isinstance(payload, dict):
        raise _bad("the request body must be a JSON object")
    row = _row_format(payload)
    items = _batch(payload, row)
    if len(items) > settings.max_images_per_request:
        raise _bad(
            f"{len(items)} images in one request; the limit is {settings.max_images_per_request}",
            "too_many_images",
        )
    images, pixels = _split(items, row)
    timeout_s = request_timeout_s(request, settings)
    with pipeline_errors(settings.retry_after_s):
        if images is not None:
            result = await pipeline.classify(images, 1, timeout_s=timeout_s)
        else:
            assert pixels is not None and pipeline.loaded is not None
            array = _pixel_array(pixels, pipeline.loaded)
            result = await pipeline.infer_pixels(array, 1, timeout_s=timeout_s)
    values = result.probabilities.tolist()
    return {"predictions": values} if row else {"outputs": values}


def _row_format(payload: dict[str, Any]) -> bool:
    signature = payload.get("signature_name", DEFAULT_SIGNATURE)
    if signature not in SIGNATURE_INPUTS:
        raise _bad(
            f'Serving signature name: "{signature}" not found in signature def; '
            f"available: {sorted(SIGNATURE_INPUTS)}"
        )
    has_instances, has_inputs = "instances" in payload, "inputs" in payload
    if has_instances and has_inputs:
        raise _bad("Not both 'instances' and 'inputs' can be specified: use one of them")
    if not has_instances and not has_inputs:
        raise _bad("Missing 'inputs' or 'instances' key")
    return has_instances


def _batch(payload: dict[str, Any], row: bool) -> list[Any]:
    """The request's list of instances, whichever form it came in."""
    if row:
        items = payload["instances"]
        if not isinstance(items, list):
            raise _bad("Expecting 'instances' to be an list/array")
    else:
        items = payload["inputs"]
        if isinstance(items, dict):
            names = sorted(items)
            if len(names) != 1 or names[0] not in (BYTES_INPUT, PIXELS_INPUT):
                raise _bad(
                    f"'inputs' names {names}; the model has one input, {BYTES_INPUT!r} "
                    f"(serving_default) or {PIXELS_INPUT!r} (serving_pixels)"
                )
            items = items[names[0]]
        if not isinstance(items, list):
            raise _bad("Expecting 'inputs' to be a list/array or an object of lists")
    if not items:
        raise _bad("the batch is empty: no instances")
    return items


def _split(items: list[Any], row: bool) -> tuple[list[bytes] | None, list[Any] | None]:
    """Encoded images or pixel arrays; a request holds one kind."""
    images: list[bytes] = []
    pixels: list[Any] = []
    for i, item in enumerate(items):
        if row and isinstance(item, dict) and "b64" not in item:
            names = sorted(item)
            if len(names) != 1 or names[0] not in (BYTES_INPUT, PIXELS_INPUT):
                raise _bad(
                    f"instances[{i}] has inputs {names}; the model has one input, "
                    f"{BYTES_INPUT!r} or {PIXELS_INPUT!r}"
                )
            item = item[names[0]]
        if isinstance(item, dict):
            if set(item) != {"b64"} or not isinstance(item["b64"], str):
                raise _bad(f'instance {i}: expected {{"b64": "<base64 image>"}}')
            try:
                data = decode_b64(item["b64"], i)
            except ApiError:
                raise _bad(f"instance {i}: 'b64' is not valid base64", "invalid_base64") from None
            if not data:
                raise _bad(f"instance {i}: the image is empty", "empty")
            images.append(data)
        elif isinstance(item, list):
            pixels.append(item)
        else:
            raise _bad(
                f'instance {i}: expected an encoded image {{"b64": "..."}} or a [H, W, 3] '
                f"array of pixels, got {type(item).__name__}"
            )
    if images and pixels:
        raise _bad("a request holds either encoded images or pixel arrays, not both")
    return (images, None) if images else (None, pixels)


def _pixel_array(pixels: list[Any], loaded) -> np.ndarray:
    height, width = loaded.input_size
    try:
        array = np.asarray(pixels, dtype=np.float64)
    except (TypeError, ValueError):
        raise _bad("pixel arrays must be equally shaped nested lists of numbers") from None
    if array.shape[1:] != (height, width, 3):
        raise _bad(
            f"pixel arrays have shape {list(array.shape[1:])}; the model takes "
            f"[{height}, {width}, 3]"
        )
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 255:
        raise _bad("pixel values must be RGB in 0..255")
    return np.round(array).astype(np.uint8)
