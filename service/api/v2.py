"""KServe V2 / Open Inference Protocol over HTTP, as Triton and KServe speak it.

The model has two alternative inputs (send exactly one):

* ``images``: ``BYTES [N]`` (or ``[N, 1]``), encoded image files, decoded by the
  preprocessing pool. As binary data the elements are the raw files; in JSON, where bytes
  cannot travel, each element is the file in base64.
* ``pixels``: ``FP32`` or ``UINT8 [N, H, W, 3]``, RGB values 0..255 at the model's input size;
  they skip the decode stage (FP32 values are rounded to whole numbers, as the model stage
  takes ``uint8``).

and one output, ``probabilities`` (``FP32 [N, classes]``), or with Triton's classification
extension (``"parameters": {"classification": k}`` on the requested output) ``BYTES [N, k]``
strings ``"score:index:label"``. Triton's binary tensor data extension works both ways
(``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data``,
``binary_data_output``). Errors are ``{"error": "<message>"}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.routing import Match

from .. import __version__
from ..pipeline.pipeline import Pipeline
from .deps import PipelineDep, SettingsDep, protocol_model
from .errors import ApiError
from .inputs import read_body, request_timeout_s
from .pipeline_errors import pipeline_errors
from .plain_errors import PlainErrorRoute, plain_error

router = APIRouter(route_class=PlainErrorRoute, tags=["kserve-v2"])

VERSION = "1"
INPUT_IMAGES = "images"
INPUT_PIXELS = "pixels"
OUTPUT = "probabilities"
PIXEL_TYPES: dict[str, np.dtype] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
HEADER_LENGTH = "Inference-Header-Content-Length"


def _bad(message: str, code: str = "invalid_input") -> ApiError:
    return ApiError(400, code, message)


def _check_model(request: Request, name: str, version: str | None) -> Pipeline:
    """The pipeline this model name picks; 404 in the protocol's own words for any other."""
    return protocol_model(
        request,
        name,
        version,
        available=VERSION,
        unknown_model="unknown model {name!r}; this server serves {served}",
        unknown_version="unknown version {version!r} of model {name!r}; available: [{available!r}]",
    )


def _tensor_sizes(pipeline) -> tuple[int, int, int]:
    """Height and width of the pixel input, and the number of output classes."""
    classes = pipeline.loaded.num_classes if pipeline.loaded else 1000
    return (*_input_size(pipeline), classes)


def _input_size(pipeline) -> tuple[int, int]:
    return pipeline.loaded.input_size if pipeline.loaded else (224, 224)


# -- health and metadata -------------------------------------------------------------------


@router.get("/v2", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions it supports."""
    return {
        "name": "resnet-serve",
        "version": __version__,
        "extensions": ["binary_tensor_data", "classification", "model_configuration"],
    }


@router.get("/v2/health/live", summary="Server live")
async def server_live(pipeline: PipelineDep) -> Response:
    """200 while the process can serve or is loading; 400 once model loading failed."""
    if pipeline.state == "failed":
        return plain_error(400, f"the model failed to load: {pipeline.error}", "model_failed")
    return JSONResponse({"live": True})


@router.get("/v2/health/ready", summary="Server ready")
async def server_ready(pipeline: PipelineDep) -> Response:
    """200 once the model is warmed; 400 (the protocol's "false") while loading or draining."""
    if pipeline.ready:
        return JSONResponse({"ready": True})
    return plain_error(400, f"the server is {pipeline.state}", "not_ready")


@router.get("/v2/models/{name}/ready", summary="Model ready")
@router.get("/v2/models/{name}/versions/{version}/ready", summary="Model version ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """200 when the model can infer; 400 while it loads or drains; 404 for an unknown model."""
    pipeline = _check_model(request, name, version)
    if pipeline.ready:
        return JSONResponse({"name": name, "ready": True})
    return plain_error(400, f"model {name!r} is {pipeline.state}", "not_ready")


@router.get("/v2/models/{name}", summary="Model metadata")
@router.get("/v2/models/{name}/versions/{version}", summary="Model version metadata")
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    """Inputs and outputs of the model, as tensor metadata."""
    height, width, classes = _tensor_sizes(_check_model(request, name, version))
    return {
        "name": name,
        "versions": [VERSION],
        "platform": "keras",
        "inputs": [
            {"name": INPUT_IMAGES, "datatype": "BYTES", "shape": [-1]},
            {"name": INPUT_PIXELS, "datatype": "FP32", "shape": [-1, height, width, 3]},
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, classes]}],
    }


@router.get("/v2/models/{name}/config", summary="Model configuration (Triton)")
@router.get("/v2/models/{name}/versions/{version}/config", summary="Model version configuration")
async def model_config(
    request: Request, name: str, settings: SettingsDep, version: str | None = None
) -> dict[str, Any]:
    """Triton's model configuration: batching limits and tensors (dims without the batch)."""
    height, width, classes = _tensor_sizes(_check_model(request, name, version))
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
        "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [classes]}],
        "dynamic_batching": {
            "preferred_batch_size": list(settings.batch_buckets),
            "max_queue_delay_microseconds": int(settings.max_batch_delay_ms * 1000),
        },
    }


# -- inference -----------------------------------------------------------------------------


@dataclass
class _Output:
    binary: bool
    classification: int  # 0: probabilities


@router.post("/v2/models/{name}/infer", summary="Inference")
@router.post("/v2/models/{name}/versions/{version}/infer", summary="Inference on a version")
async def infer(
    name: str,
    request: Request,
    settings: SettingsDep,
    version: str | None = None,
) -> Response:
    """Run encoded images (``images``) or pixel tensors (``pixels``) through the model."""
    pipeline = _check_model(request, name, version)
    with pipeline_errors(settings.retry_after_s):
        pipeline.check_ready()  # before reading a large body
    header, binary = await _read_request(request, settings.max_body_bytes)
    kind, data = _parse_inputs(header, binary, pipeline, settings)
    outputs = _parse_outputs(header)
    timeout_s = _timeout_s(header, request_timeout_s(request, settings))
    with pipeline_errors(settings.retry_after_s):
        if kind == INPUT_IMAGES:
            result = await pipeline.classify(data, 1, timeout_s=timeout_s)
        else:
            result = await pipeline.infer_pixels(data, 1, timeout_s=timeout_s)
    return _respond(name, header.get("id"), result.probabilities, outputs, pipeline.labels)


def _timeout_s(header: dict[str, Any], cap_s: float) -> float:
    """Triton's ``timeout`` request parameter (microseconds), capped like the deadline header."""
    timeout_us = _parameters(header, "request").get("timeout")
    if timeout_us is None:
        return cap_s
    if not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us <= 0:
        raise _bad("the 'timeout' parameter must be a positive number of microseconds")
    return min(timeout_us / 1e6, cap_s)


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (tritonclient's request compression)."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ApiError(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported"
        )
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _bad(f"the {encoding} body is corrupt: {exc}", "invalid_encoding") from None
    if len(out) > limit:
        raise ApiError(413, "payload_too_large", f"the decompressed body exceeds {limit} bytes")
    return out


async def _read_request(request: Request, limit: int) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tensor data that follows it, if any."""
    body = await read_body(request, limit)
    body = _decompress(body, request.headers.get("content-encoding"), limit)
    declared = request.headers.get(HEADER_LENGTH)
    if declared is None:
        header_bytes, binary = body, b""
    else:
        try:
            length = int(declared)
        except ValueError:
            raise _bad(f"{HEADER_LENGTH} {declared!r} is not an integer") from None
        if not 0 <= length <= len(body):
            raise _bad(f"{HEADER_LENGTH} {length} is outside the body, which has {len(body)} bytes")
        header_bytes, binary = body[:length], body[length:]
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(f"the inference request header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _bad("the inference request must be a JSON object")
    return header, binary


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad(f"{where}: 'parameters' must be an object")
    return params


def _parse_inputs(header: dict[str, Any], binary: bytes, pipeline, settings) -> tuple[str, Any]:
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
    height, width = _input_size(pipeline)
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
        values = np.frombuffer(raw, dtype=dtype).astype(np.float64)
    else:
        try:
            values = np.asarray(spec["data"], dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise _bad(f"input {name!r}: 'data' must be numbers (flat or nested lists)") from None
        if values.size != count:
            raise _bad(f"input {name!r}: shape {shape} needs {count} values, got {values.size}")
        if datatype == "UINT8" and not np.all(values == np.round(values)):
            raise _bad(f"input {name!r}: UINT8 values must be whole numbers")
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255:
        raise _bad(f"input {name!r}: pixel values must be RGB in 0..255")
    pixels = np.round(values).astype(np.uint8).reshape(shape)
    return INPUT_PIXELS, pixels


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
    """BYTES elements in JSON: base64 strings, flat or nested."""
    flat: list[Any] = []

    def walk(x: Any) -> None:
        if isinstance(x, list):
            for item in x:
                walk(item)
        else:
            flat.append(x)

    walk(data)
    out = []
    for i, element in enumerate(flat):
        if not isinstance(element, str):
            raise _bad(f"input {name!r}: element {i} must be a base64 string")
        try:
            out.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            raise _bad(
                f"input {name!r}: element {i} is not valid base64", "invalid_base64"
            ) from None
    return out


def _parse_outputs(header: dict[str, Any]) -> _Output:
    default_binary = _parameters(header, "request").get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise _bad("binary_data_output must be true or false")
    requested = header.get("outputs")
    if requested is None:
        return _Output(default_binary, 0)
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
    return _Output(binary, k)


def _classify(probs: np.ndarray, k: int, labels: tuple[str, ...]) -> list[bytes]:
    """Triton's classification strings, ``"%f:index:label"``, best first, row major."""
    k = min(k, probs.shape[1])
    out = []
    for row in probs:
        for index in np.argsort(-row, kind="stable")[:k]:
            label = labels[index] if index < len(labels) else ""
            text = f"{row[index]:f}:{index}" + (f":{label}" if label else "")
            out.append(text.encode())
    return out


def _respond(
    name: str, request_id: Any, probs: np.ndarray, want: _Output, labels: tuple[str, ...]
) -> Response:
    tensor: dict[str, Any] = {"name": OUTPUT}
    if want.classification:
        strings = _classify(probs, want.classification, labels)
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
        return JSONResponse(body)
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(body, separators=(",", ":")).encode()
    return Response(
        header + raw,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


# -- anything else under /v2 ---------------------------------------------------------------


@router.api_route(
    "/v2/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def not_found(path: str, request: Request) -> Response:
    """Unknown V2 paths and methods answer in the protocol's error shape."""
    scope = {**request.scope, "method": request.method}
    for route in router.routes:
        if getattr(route, "endpoint", None) is not_found:
            continue
        match, _ = route.matches(scope)
        if match == Match.PARTIAL:
            return plain_error(405, f"method {request.method} not allowed on {request.url.path}")
    return plain_error(404, f"no route {request.method} {request.url.path}", "not_found")
