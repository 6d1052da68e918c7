"""KServe V2 requests, from the HTTP body (JSON header and binary tensor data) or from a gRPC
``ModelInferRequest`` turned into the same form: one input (``images`` or ``pixels``), the
requested output, Triton's ``timeout`` parameter. Every check answers 400 with what is wrong."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from ..dataplane.request import InferRequest
from ..errors import InvalidInput
from ..settings import Settings
from .common import decode_b64, parse_json, to_pixels
from .v2 import HEADER_LENGTH, INPUT_IMAGES, INPUT_PIXELS, OUTPUT, PIXEL_TYPES, Model, OutputSpec


def _bad(message: str, code: str = "invalid_input") -> InvalidInput:
    return InvalidInput(message, code)


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
    model: Model,
    settings: Settings,
    timeout_s: float,
) -> tuple[InferRequest, OutputSpec]:
    """Validate the request's one input and its outputs; ``timeout_s`` is the transport's
    deadline, which Triton's ``timeout`` parameter may shorten."""
    kind, data = _parse_inputs(header, binary, model, settings)
    request = InferRequest(pipeline=model.info.name, timeout_s=_timeout_s(header, timeout_s))
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
    header: dict[str, Any], binary: bytes, model: Model, settings: Settings
) -> tuple[str, Any]:
    """Validate the request's one input; returns ("images", list[bytes]) or ("pixels", array)."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("the request has no 'inputs' (a non-empty list of tensors)")
    if len(inputs) != 1:
        names = " or ".join(repr(n) for n in model.inputs)
        raise _bad(f"expected exactly one input ({names}), got {len(inputs)}")
    spec = inputs[0]
    if not isinstance(spec, dict):
        raise _bad("each input must be a JSON object")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str):
        raise _bad("input is missing its 'name'")
    if name not in model.inputs:
        if model.pixels_only:
            raise _bad(
                f"unexpected inference input {name!r}; model {model.name!r} takes one input, "
                f"{INPUT_PIXELS!r} (FP32/UINT8); encoded images go to {model.info.model_name!r}"
            )
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
    height, width = model.info.input_size
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
