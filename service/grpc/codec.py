"""KServe V2 over gRPC: ``ModelInferRequest`` into the dataplane's request, its result back.

The request is turned into the form the HTTP codec validates (a header of tensors and their
parameters, and the input's bytes as HTTP's binary data extension carries them), so both
transports accept and refuse exactly the same requests, with the same messages:

* ``raw_input_contents`` (what ``tritonclient.grpc`` sends): the input's bytes as they are,
  BYTES elements with their 4-byte little-endian length prefix, FP32 little-endian;
* typed ``contents`` (``grpcurl``, hand-written clients): ``bytes_contents`` for BYTES (the
  image files), ``fp32_contents`` for FP32, ``uint_contents`` for UINT8, packed the same way.

Outputs go in ``raw_output_contents`` when the request sent its input raw (Triton always
answers raw; KServe mirrors the request), else in typed ``contents``; an output's
``binary_data`` parameter (bool) chooses either way.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from google.protobuf import json_format

from ..codecs import v2
from ..codecs.v2_inputs import decode_request
from ..dataplane.request import InferRequest
from ..errors import InvalidInput
from ..settings import Settings
from .generated import grpc_service_pb2 as pb
from .generated import model_config_pb2

# Where each datatype the models take carries its values in typed contents.
_FIELDS = {"BYTES": "bytes_contents", "FP32": "fp32_contents", "UINT8": "uint_contents"}
_ALL_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)


def parameters(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values."""
    out = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


def decode_infer(
    request: pb.ModelInferRequest, model: v2.Model, settings: Settings, timeout_s: float
) -> tuple[InferRequest, v2.OutputSpec]:
    """Validate a ``ModelInferRequest`` (400s as ``InvalidInput``, as over HTTP)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, or none and typed contents"
        )
    inputs: list[dict[str, Any]] = []
    binary = b""
    for i, tensor in enumerate(request.inputs):
        params = parameters(tensor.parameters)
        params.pop("binary_data_size", None)  # HTTP's framing, not the client's to say here
        spec: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
            "parameters": params,
        }
        inputs.append(spec)
        if i:
            continue  # a second input is refused (one input per request) before any is read
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input {tensor.name!r} has both typed contents and raw_input_contents"
                )
            binary = raw[0]
        else:
            binary = _typed(tensor)
        params["binary_data_size"] = len(binary)
    header: dict[str, Any] = {"inputs": inputs, "parameters": parameters(request.parameters)}
    header["parameters"].setdefault("binary_data_output", bool(raw))
    if request.outputs:
        header["outputs"] = [
            {"name": o.name, "parameters": parameters(o.parameters)} for o in request.outputs
        ]
    return decode_request(header, binary, model, settings, timeout_s)


def _typed(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes:
    """Typed contents packed as raw bytes (refused when the datatype's field is not used)."""
    name, datatype = tensor.name, tensor.datatype
    used = [f for f in _ALL_FIELDS if len(getattr(tensor.contents, f))]
    field = _FIELDS.get(datatype)
    if field is None:
        return b""  # the datatype itself is refused, with the expected ones
    if not used:
        raise InvalidInput(f"input {name!r} has no data: neither {field} nor raw_input_contents")
    if used != [field]:
        raise InvalidInput(
            f"input {name!r}: a {datatype} tensor carries its values in {field}, "
            f"got {', '.join(used)}"
        )
    values = getattr(tensor.contents, field)
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    if datatype == "FP32":
        return np.asarray(values, dtype="<f4").tobytes()
    array = np.asarray(values, dtype=np.uint32)
    if array.max(initial=0) > 255:
        raise InvalidInput(f"input {name!r}: UINT8 values must be 0..255")
    return array.astype(np.uint8).tobytes()


def encode_infer(
    name: str,
    request_id: str,
    probs: np.ndarray,
    want: v2.OutputSpec,
    labels: tuple[str, ...],
) -> pb.ModelInferResponse:
    """The ``ModelInferResponse``: probabilities or classification strings."""
    tensor, raw, values = v2.output_tensor(probs, want, labels)
    response = pb.ModelInferResponse(model_name=name, model_version=v2.VERSION, id=request_id)
    output = response.outputs.add(
        name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
    )
    if want.binary:
        response.raw_output_contents.append(raw)
    elif tensor["datatype"] == "BYTES":
        output.contents.bytes_contents.extend(v.encode() for v in values)
    else:
        output.contents.fp32_contents.extend(values)
    return response


def model_metadata(model: v2.Model) -> pb.ModelMetadataResponse:
    return json_format.ParseDict(v2.model_metadata(model), pb.ModelMetadataResponse())


def model_config(model: v2.Model, settings: Settings) -> pb.ModelConfigResponse:
    config = json_format.ParseDict(v2.model_config(model, settings), model_config_pb2.ModelConfig())
    return pb.ModelConfigResponse(config=config)
