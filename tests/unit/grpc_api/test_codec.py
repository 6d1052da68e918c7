"""The gRPC codec and status mapping, without a server."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from service import errors
from service.codecs.v2 import Model, OutputSpec
from service.grpc.codec import decode_infer, encode_infer, parameters
from service.grpc.errors import Unimplemented, status_code
from service.grpc.generated import grpc_service_pb2 as pb
from service.pipeline.info import PipelineInfo
from service.settings import Settings

MODEL = Model("m", PipelineInfo(name="default", model_name="m", input_size=(2, 2)))
Tensor = pb.ModelInferRequest.InferInputTensor


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Unauthorized("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.Conflict("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.UnsupportedMediaType("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Overloaded("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.NotReady.of("loading"), grpc.StatusCode.UNAVAILABLE),
        (errors.EngineUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.ModelError("x"), grpc.StatusCode.INTERNAL),
        (Unimplemented("x"), grpc.StatusCode.UNIMPLEMENTED),
    ],
)
def test_every_kind_of_error_has_its_status(error, code):
    assert status_code(error) == code


def test_parameters_become_plain_values():
    request = pb.ModelInferRequest()
    request.parameters["timeout"].int64_param = 5000
    request.parameters["flag"].bool_param = True
    request.parameters["name"].string_param = "x"
    request.parameters["empty"].CopyFrom(pb.InferParameter())
    assert parameters(request.parameters) == {
        "timeout": 5000,
        "flag": True,
        "name": "x",
        "empty": None,
    }


def _request(tensor, **kw) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", inputs=[tensor], **kw)


def test_raw_and_typed_pixels_decode_alike():
    pixels = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    raw = _request(
        Tensor(name="pixels", datatype="UINT8", shape=[1, 2, 2, 3]),
        raw_input_contents=[pixels.tobytes()],
    )
    typed = _request(
        Tensor(
            name="pixels",
            datatype="FP32",
            shape=[1, 2, 2, 3],
            contents=pb.InferTensorContents(fp32_contents=pixels.ravel().astype(float)),
        )
    )
    for request, binary in ((raw, True), (typed, False)):
        decoded, want = decode_infer(request, MODEL, Settings(), 30.0)
        np.testing.assert_array_equal(decoded.pixels, pixels)
        assert decoded.pipeline == "default" and decoded.timeout_s == 30.0
        assert want == OutputSpec(binary=binary, classification=0)


def test_timeout_parameter_shortens_the_deadline():
    request = _request(
        Tensor(
            name="images",
            datatype="BYTES",
            shape=[1],
            contents=pb.InferTensorContents(bytes_contents=[b"abc"]),
        )
    )
    request.parameters["timeout"].int64_param = 250_000  # microseconds
    decoded, _ = decode_infer(request, MODEL, Settings(), 30.0)
    assert decoded.images == [b"abc"] and decoded.timeout_s == 0.25


def test_a_long_shape_is_refused_before_any_arithmetic_on_it():
    tensor = Tensor(name="pixels", datatype="UINT8", shape=[2**62] * 40_000)
    start = time.perf_counter()
    with pytest.raises(errors.InvalidInput, match="at most 4 of them"):
        decode_infer(_request(tensor, raw_input_contents=[b""]), MODEL, Settings(), 30.0)
    assert time.perf_counter() - start < 0.5


def test_outputs_raw_or_typed():
    probs = np.array([[0.25, 0.75]], np.float32)
    raw = encode_infer("m", "id-1", probs, OutputSpec(True, 0), ("a", "b"))
    assert raw.id == "id-1" and raw.model_version == "1"
    assert np.frombuffer(raw.raw_output_contents[0], "<f4").tolist() == [0.25, 0.75]
    assert list(raw.outputs[0].shape) == [1, 2] and raw.outputs[0].datatype == "FP32"
    typed = encode_infer("m", "", probs, OutputSpec(False, 0), ())
    assert list(typed.outputs[0].contents.fp32_contents) == [0.25, 0.75]
    classes = encode_infer("m", "", probs, OutputSpec(False, 1), ("a", "b"))
    assert classes.outputs[0].datatype == "BYTES"
    assert list(classes.outputs[0].contents.bytes_contents) == [b"0.750000:1:b"]
