"""KServe V2 requests, from the HTTP body (JSON header and binary tensor data) or from a gRPC
``ModelInferRequest`` turned into the same form: one input (``images`` or ``pixels``), the
requested output, Triton's ``timeout`` parameter. Every check answers 400 with what is wrong.

The JSON header's shape is declared as pydantic models (``_Header``); ``_WORDS`` says, field
by field, how an error there is worded. What depends on the model (input names, pixel shape)
and on the tensor's contents is checked after, in code."""

from __future__ import annotations

import math
import struct
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

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


# -- the JSON header, declared ---------------------------------------------------------------

NonNegative = Annotated[StrictInt, Field(ge=0)]
# Triton's ``timeout`` is an unsigned 64-bit integer (gRPC's uint64_param); a larger one may
# have no float to convert to. 0 is Triton's "the request has no timeout" (tritonserver.h,
# TRITONSERVER_InferenceRequestSetTimeoutMicroseconds): the transport's deadline applies.
MAX_TIMEOUT_US = 2**64 - 1
# The tensors the models take have at most 4 dimensions ([N, H, W, 3]); a longer shape is
# refused before any arithmetic on it (its product is a big-integer multiplication per entry).
MAX_DIMS = 4
OPEN = ConfigDict(extra="ignore")  # V2 lets clients send fields and parameters we do not use


class _RequestParameters(BaseModel):
    model_config = OPEN
    timeout: Annotated[StrictInt, Field(ge=0, le=MAX_TIMEOUT_US)] | None = None  # microseconds
    binary_data_output: StrictBool = False


class _InputParameters(BaseModel):
    model_config = OPEN
    binary_data_size: NonNegative | None = None


class _Input(BaseModel):
    model_config = OPEN
    name: StrictStr
    datatype: StrictStr
    shape: Annotated[list[NonNegative], Field(min_length=1, max_length=MAX_DIMS)]
    parameters: _InputParameters | None = None
    data: Any = None  # checked against the datatype and shape below


class _OutputParameters(BaseModel):
    model_config = OPEN
    binary_data: StrictBool | None = None
    classification: NonNegative = 0


class _Output(BaseModel):
    model_config = OPEN
    name: StrictStr
    parameters: _OutputParameters | None = None


class _Header(BaseModel):
    """The fields of a V2 inference request this service reads, in the order they are checked."""

    model_config = OPEN
    inputs: Annotated[list[_Input], Field(min_length=1)]
    parameters: _RequestParameters | None = None
    # Empty: none requested, so all of them, as Triton reads it (and as gRPC, where an empty
    # repeated field cannot be told from an absent one).
    outputs: Annotated[list[_Output], Field(max_length=1)] | None = None


# What went wrong, by where in the header (a number: any list index); the longest match wins.
_WORDS: dict[tuple[str, ...], str] = {
    ("inputs",): "the request has no 'inputs' (a non-empty list of tensors)",
    ("inputs", "#"): "each input must be a JSON object",
    ("inputs", "#", "name"): "input is missing its 'name'",
    ("inputs", "#", "datatype"): "input {name!r} is missing its 'datatype'",
    ("inputs", "#", "shape"): (
        "input {name!r}: 'shape' must be a non-empty list of non-negative integers, "
        f"at most {MAX_DIMS} of them"
    ),
    ("inputs", "#", "parameters"): "input {name!r}: 'parameters' must be an object",
    ("inputs", "#", "parameters", "binary_data_size"): (
        "input {name!r}: binary_data_size must be a non-negative integer"
    ),
    ("parameters",): "request: 'parameters' must be an object",
    ("parameters", "timeout"): (
        "the 'timeout' parameter must be a number of microseconds from 0 (none) to 2**64 - 1"
    ),
    ("parameters", "binary_data_output"): "binary_data_output must be true or false",
    ("outputs",): f"'outputs' must be a list with the model's one output, {OUTPUT!r}",
    ("outputs", "#"): "unexpected inference output {output!r}; the model's output is "
    + repr(OUTPUT),
    ("outputs", "#", "name"): "unexpected inference output {output!r}; the model's output is "
    + repr(OUTPUT),
    ("outputs", "#", "parameters"): f"output {OUTPUT!r}: 'parameters' must be an object",
    ("outputs", "#", "parameters", "binary_data"): (
        f"output {OUTPUT!r}: binary_data must be true or false"
    ),
    ("outputs", "#", "parameters", "classification"): (
        f"output {OUTPUT!r}: classification must be a non-negative integer"
    ),
}


def _validate(header: dict[str, Any]) -> _Header:
    try:
        return _Header.model_validate(header)
    except ValidationError as exc:
        raise _bad(_explain(exc.errors()[0]["loc"], header)) from None


def _explain(loc: tuple[int | str, ...], header: dict[str, Any]) -> str:
    """The wording of ``_WORDS`` for the error at ``loc``, with the tensor's name filled in."""
    key = tuple("#" if isinstance(part, int) else part for part in loc)
    while key and key not in _WORDS:
        key = key[:-1]
    if not key:
        return "the inference request must be a JSON object"
    index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
    items = header.get(str(loc[0]))
    item = items[index] if isinstance(items, list) and index < len(items) else None
    name = item.get("name") if isinstance(item, dict) else item
    return _WORDS[key].format(name=name, output=name)


# -- the request --------------------------------------------------------------------------


def decode_request(
    header: dict[str, Any],
    binary: bytes,
    model: Model,
    settings: Settings,
    timeout_s: float,
) -> tuple[InferRequest, OutputSpec]:
    """Validate the request's one input and its outputs; ``timeout_s`` is the transport's
    deadline, which Triton's ``timeout`` parameter may shorten."""
    parsed = _validate(header)
    _check_id(header.get("id"))
    kind, data = _parse_input(parsed.inputs, binary, model, settings)
    params = parsed.parameters or _RequestParameters()
    timeout_us = params.timeout
    request = InferRequest(
        pipeline=model.info.name,
        timeout_s=min(timeout_us / 1e6, timeout_s) if timeout_us else timeout_s,
    )
    if kind == INPUT_IMAGES:
        request.images = data
    else:
        request.pixels = data
    return request, _parse_outputs(parsed.outputs, params.binary_data_output)


def _check_id(request_id: Any) -> None:
    """The answer quotes a string ``id`` as UTF-8: refuse one it cannot carry (a lone surrogate
    from a ``"\\ud800"`` escape) before the model runs, not when the answer is written."""
    if isinstance(request_id, str):
        try:
            request_id.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(
                f"the request 'id' {request_id!r} is not valid Unicode text "
                "(a lone surrogate escape)"
            ) from None


def _parse_input(
    inputs: list[_Input], binary: bytes, model: Model, settings: Settings
) -> tuple[str, Any]:
    """Validate the request's one input; returns ("images", list[bytes]) or ("pixels", array)."""
    if len(inputs) != 1:
        names = " or ".join(repr(n) for n in model.inputs)
        raise _bad(f"expected exactly one input ({names}), got {len(inputs)}")
    spec = inputs[0]
    name, datatype, shape = spec.name, spec.datatype, spec.shape
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
    has_data = "data" in spec.model_fields_set
    raw = _binary_part(spec, has_data, binary)
    if raw is None and not has_data:
        raise _bad(f"input {name!r} has neither 'data' nor binary data")
    if name == INPUT_IMAGES:
        if datatype != "BYTES":
            raise _bad(f"input {name!r}: datatype {datatype!r}, expected 'BYTES'")
        if shape not in ([n], [n, 1]):
            raise _bad(f"input {name!r}: shape {shape}, expected [N] or [N, 1]")
        images = _bytes_elements(raw, name) if raw is not None else _json_bytes(spec.data, name)
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
            values = np.asarray(spec.data, dtype=np.float64).ravel()
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int past any float
            raise _bad(f"input {name!r}: 'data' must be numbers (flat or nested lists)") from None
        if values.size != count:
            raise _bad(f"input {name!r}: shape {shape} needs {count} values, got {values.size}")
        if datatype == "UINT8" and not np.all(values == np.round(values)):
            raise _bad(f"input {name!r}: UINT8 values must be whole numbers")
    return INPUT_PIXELS, to_pixels(values, f"input {name!r}: ").reshape(shape)


def _binary_part(spec: _Input, has_data: bool, binary: bytes) -> bytes | None:
    """The input's slice of the binary data (one input per request, so it is all of it)."""
    size = spec.parameters.binary_data_size if spec.parameters else None
    if size is None:
        if binary:
            raise _bad(
                f"{len(binary)} bytes of binary data follow the header but no input "
                "declares 'binary_data_size'"
            )
        return None
    if has_data:
        raise _bad(f"input {spec.name!r} has both 'data' and binary data")
    if size != len(binary):
        raise _bad(
            f"input {spec.name!r}: binary_data_size is {size} but {len(binary)} bytes of binary "
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


def _parse_outputs(outputs: list[_Output] | None, default_binary: bool) -> OutputSpec:
    if not outputs:
        return OutputSpec(default_binary, 0)
    spec = outputs[0]
    if spec.name != OUTPUT:
        raise _bad(f"unexpected inference output {spec.name!r}; the model's output is {OUTPUT!r}")
    params = spec.parameters or _OutputParameters()
    binary = default_binary if params.binary_data is None else params.binary_data
    return OutputSpec(binary, params.classification)
