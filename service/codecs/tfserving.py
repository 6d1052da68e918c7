"""TensorFlow Serving's REST API: the codec (model status, metadata, ``:predict``).

Two signatures, each with one output ``probabilities`` (``DT_FLOAT [-1, classes]``):

* ``serving_default``: input ``image_bytes`` (``DT_STRING [-1]``), encoded image files as
  ``{"b64": "..."}``, decoded by the service;
* ``serving_pixels``: input ``images`` (``DT_FLOAT [-1, H, W, 3]``), RGB values 0..255 at
  the model's input size, which skip decode.

Either signature accepts either form, told apart by the value (``{"b64": ...}`` or a nested
list of numbers), so a client written for a Keras model exported with float inputs and one
written for a string-input export both work. Requests come in TensorFlow Serving's row
(``"instances"``) or columnar (``"inputs"``) form and are answered ``{"predictions": ...}`` or
``{"outputs": ...}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..dataplane.request import InferRequest
from ..errors import InvalidInput
from ..pipeline.info import PipelineInfo
from ..settings import Settings
from .common import decode_b64, parse_json, to_pixels

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


# How a model name that is not served, or a version that is not, is answered (404).
NOT_FOUND = {
    "available": VERSION,
    "unknown_model": "Servable not found for request: Latest({name}); this server serves {served}",
    "unknown_version": (
        "Servable not found for request: Specific({name}, {version}); "
        "available version: {available}"
    ),
}


def _bad(message: str, code: str = "invalid_argument") -> InvalidInput:
    return InvalidInput(message, code)


# -- status and metadata ------------------------------------------------------------------


def model_status(info: PipelineInfo) -> dict[str, Any]:
    """The model's version and its state: START, LOADING, AVAILABLE, UNLOADING or END."""
    failed = info.state == "failed"
    return {
        "model_version_status": [
            {
                "version": VERSION,
                "state": _STATES.get(info.state, "UNKNOWN"),
                "status": {
                    "error_code": "UNKNOWN" if failed else "OK",
                    "error_message": (info.error or "") if failed else "",
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


def model_metadata(name: str, info: PipelineInfo) -> dict[str, Any]:
    """The signature definitions: inputs, outputs and method of each signature."""
    height, width = info.input_size
    classes = info.num_classes or 1000
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


# -- predict ------------------------------------------------------------------------------


def decode_predict(
    body: bytes, info: PipelineInfo, settings: Settings, timeout_s: float
) -> tuple[InferRequest, bool]:
    """A ``:predict`` body as a request, and whether it came in the row form."""
    payload = parse_json(body, "the JSON body", "invalid_argument", "JSON Parse error: {exc}")
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
    request = InferRequest(pipeline=info.name, timeout_s=timeout_s)
    if images is not None:
        request.images = images
    else:
        assert pixels is not None
        request.pixels = _pixel_array(pixels, info.input_size)
    return request, row


def encode_predict(probs: np.ndarray, row: bool) -> dict[str, Any]:
    values = probs.tolist()
    return {"predictions": values} if row else {"outputs": values}


def _row_format(payload: dict[str, Any]) -> bool:
    signature = payload.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature, str):  # a list or an object cannot be looked up
        raise _bad(f"'signature_name' must be a string, got {type(signature).__name__}")
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
            items = _the_input(
                items,
                "'inputs' names",
                f"{BYTES_INPUT!r} (serving_default) or {PIXELS_INPUT!r} (serving_pixels)",
            )
        if not isinstance(items, list):
            raise _bad("Expecting 'inputs' to be a list/array or an object of lists")
    if not items:
        raise _bad("the batch is empty: no instances")
    return items


def _the_input(named: dict[str, Any], what: str, choices: str) -> Any:
    """The value of the one input a mapping of inputs names (by either input's name)."""
    names = sorted(named)
    if len(names) != 1 or names[0] not in (BYTES_INPUT, PIXELS_INPUT):
        raise _bad(f"{what} {names}; the model has one input, {choices}")
    return named[names[0]]


def _split(items: list[Any], row: bool) -> tuple[list[bytes] | None, list[Any] | None]:
    """Encoded images or pixel arrays; a request holds one kind."""
    images: list[bytes] = []
    pixels: list[Any] = []
    for i, item in enumerate(items):
        if row and isinstance(item, dict) and "b64" not in item:
            item = _the_input(
                item, f"instances[{i}] has inputs", f"{BYTES_INPUT!r} or {PIXELS_INPUT!r}"
            )
        if isinstance(item, dict):
            if set(item) != {"b64"} or not isinstance(item["b64"], str):
                raise _bad(f'instance {i}: expected {{"b64": "<base64 image>"}}')
            data = decode_b64(item["b64"], f"instance {i}: 'b64'")
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


def _pixel_array(pixels: list[Any], size: tuple[int, int]) -> np.ndarray:
    height, width = size
    try:
        array = np.asarray(pixels, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past any float
        raise _bad("pixel arrays must be equally shaped nested lists of numbers") from None
    if array.shape[1:] != (height, width, 3):
        raise _bad(
            f"pixel arrays have shape {list(array.shape[1:])}; the model takes "
            f"[{height}, {width}, 3]"
        )
    return to_pixels(array, code="invalid_argument")
