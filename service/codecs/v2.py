"""KServe V2 / Open Inference Protocol over HTTP (as Triton and KServe speak it): the codec.

Every model has two alternative inputs (send exactly one):

* ``images``: ``BYTES [N]`` (or ``[N, 1]``), encoded image files, decoded by the service. As
  binary data the elements are the raw files; in JSON, where bytes cannot travel, each element
  is the file in base64.
* ``pixels``: ``FP32`` or ``UINT8 [N, H, W, 3]``, RGB values 0..255 at the model's input size;
  they skip decode (FP32 values are rounded to whole numbers: the model stage takes ``uint8``).

and one output, ``probabilities`` (``FP32 [N, classes]``), or with Triton's classification
extension (``"parameters": {"classification": k}`` on the requested output) ``BYTES [N, k]``
strings ``"score:index:label"``. Triton's binary tensor data extension works both ways
(``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data``,
``binary_data_output``).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataplane.request import InferRequest
from ..errors import InvalidInput
from ..pipeline.info import PipelineInfo
from ..settings import Settings
from .common import decode_b64, parse_json, to_pixels

VERSION = "1"
INPUT_IMAGES = "images"
INPUT_PIXELS = "pixels"
OUTPUT = "probabilities"
PIXEL_TYPES: dict[str, np.dtype] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]


# How a model name that is not served, or a version that is not, is answered (404).
NOT_FOUND = {
    "available": VERSION,
    "unknown_model": "unknown model {name!r}; this server serves {served}",
    "unknown_version": "unknown version {version!r} of model {name!r}; available: [{available!r}]",
}


def _bad(message: str, code: str = "invalid_input") -> InvalidInput:
    return InvalidInput(message, code)


# -- metadata -----------------------------------------------------------------------------


def model_metadata(name: str, info: PipelineInfo) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's inputs and outputs as tensor metadata."""
    height, width = info.input_size
    return {
        "name": name,
        "versions": [VERSION],
        "platform": "keras",
        "inputs": [
            {"name": INPUT_IMAGES, "datatype": "BYTES", "shape": [-1]},
            {"name": INPUT_PIXELS, "datatype": "FP32", "shape": [-1, height, width, 3]},
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, _classes(info)]}],
    }


def model_config(name: str, info: PipelineInfo, settings: Settings) -> dict[str, Any]:
    """Triton's model configuration: batching limits and tensors (dims without the batch)."""
    height, width = info.input_size
    return {
        "name": name,
        "platform": "keras",
        "max_batch_size": settings.max_images_per_request,
        "input": [
            {"name": INPUT_IMAGES, "data_type": "TYPE_STRING", "dims": [1], "optional": True},
            {
                "name": INPUT_PIXELS,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NHWC",
                "dims": [height, width, 3],
                "optional": True,
            },
        ],
        "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [_classes(info)]}],
        "dynamic_batching": {
            "preferred_batch_size": list(settings.batch_buckets),
            "max_queue_delay_microseconds": int(settings.max_batch_delay_ms * 1000),
        },
    }


def _classes(info: PipelineInfo) -> int:
    return info.num_classes or 1000


# -- requests -----------------------------------------------------------------------------


@dataclass
class OutputSpec:
    """How the client wants the output: binary or JSON, probabilities or top-k strings."""

    binary: bool
    classification: int  # 0: probabilities


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tensor data that follows it, if any."""
    if header_length is None:
        header_bytes, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise _bad(f"{HEADER_LENGTH} {header_length!r} is not an integer") from None
        if not 0 <= length <= len(body):
            raise _bad(f"{HEADER_LENGTH} {length} is outside the body, which has {len(body)} bytes")
        header_bytes, binary = body[:length], body[length:]
    header = parse_json(header_bytes, "the inference request header", "invalid_input")
    if not isinstance(header, dict):
        raise _bad("the inference request must be a JSON object")
    return header, binary


def decode_request(
    header: dict[str, Any],
    binary: bytes,
    info: PipelineInfo,
    settings: Settings,
    timeout_s: float,
) -> tuple[InferRequest, OutputSpec]:
    """Validate the request's one input and its outputs; ``timeout_s`` is the transport's
    deadline, which Triton's ``timeout`` parameter may shorten."""
    kind, data = _parse_inputs(header, binary, info, settings)
    request = InferRequest(pipeline=info.name, timeout_s=_timeout_s(header, timeout_s))
    if kind == INPUT_IMAGES:
        request.images = data
    else:
        request.pixels = data
    return request, _parse_outputs(header)


def _timeout_s(header: dict[str, Any], cap_s: float) -> float:
    """Triton's ``timeout`` request parameter (microseconds), capped like the deadline header."""
    timeout_us = _parameters(header, "request").get("timeout")
    if timeout_us is None:
        return cap_s
    if not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us <= 0:
        raise _bad("the 'timeout' parameter must be a positive number of microseconds")
    return min(timeout_us / 1e6, cap_s)


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad(f"{where}: 'parameters' must be an object")
    return params


def _parse_inputs(
    header: dict[str, Any], binary: bytes, info: PipelineInfo, settings: Settings
) -> tuple[str, Any]:
    """Validate the request's one input; returns ("images", list[bytes]) or ("pixels", array)."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("the request has no 'inputs' (a non-empty list of tensors)")
    if len(inputs) != 1:
        raise _bad(
            f"expected exactly one input ({INPUT_IMAGES!r} or {INPUT_PIXELS!r}), got {len(inputs)}"
        )
    spec = inputs[0]
    if not isinstance(spec, dict):
        raise _bad("each input must be a JSON object")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str):
        raise _bad("input is missing its 'name'")
    if name not in (INPUT_IMAGES, INPUT_PIXELS):
        raise _bad(
            f"unexpected inference input {name!r}; the model's inputs are "
            f"{INPUT_IMAGES!r} (BYTES) and {INPUT_PIXELS!r} (FP32/UINT8)"
        )
    if not isinstance(datatype, str):
        raise _bad(f"input {name!r} is missing its 'datatype'")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise _bad(f"input {name!r}: 'shape' must be a non-empty list of non-negative integers")
    count = math.prod(shape)
    n = shape[0]
    if n == 0:
        raise _bad(f"input {name!r}: the batch is empty")
    if n > settings.max_images_per_request:
        raise _bad(
            f"input {name!r}: {n} images in one request; "
            f"the limit is {settings.max_images_per_request}",
            "too_many_images",
        )
    raw = _binary_part(spec, name, binary)
    if raw is None and "data" not in spec:
        raise _bad(f"input {name!r} has neither 'data' nor binary data")
    if name == INPUT_IMAGES:
        if datatype != "BYTES":
            raise _bad(f"input {name!r}: datatype {datatype!r}, expected 'BYTES'")
        if shape not in ([n], [n, 1]):
            raise _bad(f"input {name!r}: shape {shape}, expected [N] or [N, 1]")
        images = _bytes_elements(raw, name) if raw is not None else _json_bytes(spec["data"], name)
        if len(images) != count:
            raise _bad(f"input {name!r}: shape {shape} needs {count} elements, got {len(images)}")
        for i, image in enumerate(images):
            if not image:
                raise _bad(f"input {name!r}: element {i} is empty", "empty")
        return INPUT_IMAGES, images
    height, width = info.input_size
    if datatype not in PIXEL_TYPES:
        raise _bad(f"input {name!r}: datatype {datatype!r}, expected 'FP32' or 'UINT8'")
    if shape[1:] != [height, width, 3]:
        raise _bad(f"input {name!r}: shape {shape}, expected [N, {height}, {width}, 3]")
    dtype = PIXEL_TYPES[datatype]
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise _bad(
                f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} "
                f"bytes, got {len(raw)}"
            )
        if dtype == np.uint8:  # already what the model takes: no range to check
            return INPUT_PIXELS, np.frombuffer(raw, dtype=np.uint8).reshape(shape)
        values = np.frombuffer(raw, dtype=dtype)
    else:
        try:
            values = np.asarray(spec["data"], dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise _bad(f"input {name!r}: 'data' must be numbers (flat or nested lists)") from None
        if values.size != count:
            raise _bad(f"input {name!r}: shape {shape} needs {count} values, got {values.size}")
        if datatype == "UINT8" and not np.all(values == np.round(values)):
            raise _bad(f"input {name!r}: UINT8 values must be whole numbers")
    return INPUT_PIXELS, to_pixels(values, f"input {name!r}: ").reshape(shape)


def _binary_part(spec: dict[str, Any], name: str, binary: bytes) -> bytes | None:
    """The input's slice of the binary data (one input per request, so it is all of it)."""
    size = _parameters(spec, f"input {name!r}").get("binary_data_size")
    if size is None:
        if binary:
            raise _bad(
                f"{len(binary)} bytes of binary data follow the header but no input "
                "declares 'binary_data_size'"
            )
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
    if "data" in spec:
        raise _bad(f"input {name!r} has both 'data' and binary data")
    if size != len(binary):
        raise _bad(
            f"input {name!r}: binary_data_size is {size} but {len(binary)} bytes of binary "
            "data follow the header"
        )
    return binary


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """Split a binary BYTES tensor: each element is a 4-byte little-endian length + bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise _bad(f"input {name!r}: truncated BYTES element length at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise _bad(f"input {name!r}: BYTES element of {length} bytes runs past the data")
        out.append(raw[offset : offset + length])
        offset += length
    return out


def _json_bytes(data: Any, name: str) -> list[bytes]:
    """BYTES elements in JSON: base64 strings, flat or nested (depth bounded by the parser)."""
    flat: list[Any] = []
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(reversed(x))
        else:
            flat.append(x)
    out = []
    for i, element in enumerate(flat):
        if not isinstance(element, str):
            raise _bad(f"input {name!r}: element {i} must be a base64 string")
        out.append(decode_b64(element, f"input {name!r}: element {i}"))
    return out


def _parse_outputs(header: dict[str, Any]) -> OutputSpec:
    default_binary = _parameters(header, "request").get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise _bad("binary_data_output must be true or false")
    requested = header.get("outputs")
    if requested is None:
        return OutputSpec(default_binary, 0)
    if not isinstance(requested, list) or len(requested) != 1:
        raise _bad(f"'outputs' must be a list with the model's one output, {OUTPUT!r}")
    spec = requested[0]
    if not isinstance(spec, dict) or spec.get("name") != OUTPUT:
        got = spec.get("name") if isinstance(spec, dict) else spec
        raise _bad(f"unexpected inference output {got!r}; the model's output is {OUTPUT!r}")
    params = _parameters(spec, f"output {OUTPUT!r}")
    binary = params.get("binary_data", default_binary)
    k = params.get("classification", 0)
    if not isinstance(binary, bool):
        raise _bad(f"output {OUTPUT!r}: binary_data must be true or false")
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise _bad(f"output {OUTPUT!r}: classification must be a non-negative integer")
    return OutputSpec(binary, k)


# -- answers ------------------------------------------------------------------------------


def classification_strings(probs: np.ndarray, k: int, labels: tuple[str, ...]) -> list[bytes]:
    """Triton's classification strings, ``"%f:index:label"``, best first, row major."""
    k = min(k, probs.shape[1])
    out = []
    for row in probs:
        for index in np.argsort(-row, kind="stable")[:k]:
            label = labels[index] if index < len(labels) else ""
            text = f"{row[index]:f}:{index}" + (f":{label}" if label else "")
            out.append(text.encode())
    return out


def encode_response(
    name: str, request_id: Any, probs: np.ndarray, want: OutputSpec, labels: tuple[str, ...]
) -> tuple[bytes, dict[str, str], str]:
    """The response body, its extra headers and its media type."""
    tensor: dict[str, Any] = {"name": OUTPUT}
    if want.classification:
        strings = classification_strings(probs, want.classification, labels)
        k = min(want.classification, probs.shape[1])
        tensor.update(datatype="BYTES", shape=[len(probs), k])
        raw = b"".join(struct.pack("<I", len(s)) + s for s in strings)
        json_data: list[Any] = [s.decode() for s in strings]
    else:
        probs = probs.astype("<f4", copy=False)
        tensor.update(datatype="FP32", shape=list(probs.shape))
        raw = probs.tobytes()
        json_data = probs.ravel().tolist()
    body: dict[str, Any] = {"model_name": name, "model_version": VERSION}
    if isinstance(request_id, str) and request_id:
        body["id"] = request_id
    body["outputs"] = [tensor]
    if not want.binary:
        tensor["data"] = json_data
        return _json(body), {}, "application/json"
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = _json(body)
    return header + raw, {HEADER_LENGTH: str(len(header))}, "application/octet-stream"


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
