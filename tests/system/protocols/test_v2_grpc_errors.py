"""Bad KServe V2 calls over gRPC get the right status code and the HTTP route's own message."""

from __future__ import annotations

import base64
import json

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.support.helpers import HARDENED_TOKEN

Tensor = pb.ModelInferRequest.InferInputTensor


def _call(stub, request: pb.ModelInferRequest, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request, **kw)
    return exc.value


def _reason(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("x-error-code", "")


def _http_message(server, model_name: str, body: dict) -> str:
    r = httpx.post(f"{server.url}/v2/models/{model_name}/infer", json=body)
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_unknown_model_and_version_are_not_found(grpc_stub, model_name, pixels):
    tensor = Tensor(name="pixels", datatype="UINT8", shape=list(pixels.shape))
    raw = [pixels.tobytes()]
    error = _call(grpc_stub, pb.ModelInferRequest(model_name="nope", inputs=[tensor],
                                                  raw_input_contents=raw))  # fmt: skip
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown model 'nope'" in error.details() and model_name in error.details()
    assert _reason(error) == "model_not_found"
    error = _call(
        grpc_stub,
        pb.ModelInferRequest(
            model_name=model_name, model_version="9", inputs=[tensor], raw_input_contents=raw
        ),
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND and "unknown version" in error.details()


@pytest.mark.parametrize(
    ("name", "datatype", "shape", "expected"),
    [
        ("pixels", "INT32", [1, 32, 32, 3], "expected 'FP32' or 'UINT8'"),
        ("images", "UINT8", [1], "expected 'BYTES'"),
        ("pixels", "UINT8", [1, 16, 16, 3], "expected [N, 32, 32, 3]"),
        ("INPUT__0", "UINT8", [1, 32, 32, 3], "unexpected inference input 'INPUT__0'"),
        ("pixels", "UINT8", [1, -1, 32, 3], "non-negative integers"),
        ("pixels", "UINT8", [1, 32, 32, 3, 1], "at most 4 of them"),
    ],
)
def test_wrong_datatype_shape_or_name_is_invalid_argument_as_over_http(
    server, grpc_stub, model_name, name, datatype, shape, expected
):
    size = int(np.prod([max(d, 0) for d in shape])) * (4 if datatype == "INT32" else 1)
    error = _call(
        grpc_stub,
        pb.ModelInferRequest(
            model_name=model_name,
            inputs=[Tensor(name=name, datatype=datatype, shape=shape)],
            raw_input_contents=[b"\0" * size],
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in error.details()
    assert _reason(error) == "invalid_input"
    # HTTP's binary data extension, the same bytes: the same words.
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    r = httpx.post(
        f"{server.url}/v2/models/{model_name}/infer",
        content=header + b"\0" * size,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400 and r.json()["error"] == error.details()


def test_not_an_image_is_invalid_argument(server, triton_grpc, model_name):
    tensor = grpcclient.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"this is not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as exc:
        triton_grpc.infer(model_name, [tensor])
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert exc.value.message().startswith("image 0:")
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(b"this is not an image").decode()],
            }
        ]
    }
    assert _http_message(server, model_name, body) == exc.value.message()


def test_malformed_messages_say_what_is_wrong(grpc_stub, model_name, pixels):
    raw = pixels.tobytes()
    shape = list(pixels.shape)
    cases = [
        # two inputs
        (pb.ModelInferRequest(
            model_name=model_name,
            inputs=[Tensor(name="pixels", datatype="UINT8", shape=shape)] * 2,
            raw_input_contents=[raw, raw]), "expected exactly one input"),
        # raw contents that do not match the inputs
        (pb.ModelInferRequest(
            model_name=model_name,
            inputs=[Tensor(name="pixels", datatype="UINT8", shape=shape)],
            raw_input_contents=[raw, raw]), "raw_input_contents has 2 entries for 1 inputs"),
        # both ways at once
        (pb.ModelInferRequest(
            model_name=model_name,
            inputs=[Tensor(name="pixels", datatype="UINT8", shape=shape,
                           contents=pb.InferTensorContents(uint_contents=[1]))],
            raw_input_contents=[raw]), "both typed contents and raw_input_contents"),
        # no data
        (pb.ModelInferRequest(
            model_name=model_name,
            inputs=[Tensor(name="pixels", datatype="FP32", shape=shape)]), "has no data"),
        # the wrong typed field
        (pb.ModelInferRequest(
            model_name=model_name,
            inputs=[Tensor(name="pixels", datatype="FP32", shape=[1, 32, 32, 3],
                           contents=pb.InferTensorContents(int64_contents=[0] * 3072))]),
         "carries its values in fp32_contents, got int64_contents"),
        # UINT8 out of range
        (pb.ModelInferRequest(
            model_name=model_name,
            inputs=[Tensor(name="pixels", datatype="UINT8", shape=[1, 32, 32, 3],
                           contents=pb.InferTensorContents(uint_contents=[300] * 3072))]),
         "UINT8 values must be 0..255"),
        # too few bytes for the shape
        (pb.ModelInferRequest(
            model_name=model_name,
            inputs=[Tensor(name="pixels", datatype="FP32", shape=shape)],
            raw_input_contents=[raw]), f"needs {pixels.size * 4} bytes, got {pixels.size}"),
        # an output the model does not have
        (pb.ModelInferRequest(
            model_name=model_name,
            inputs=[Tensor(name="pixels", datatype="UINT8", shape=shape)],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
            raw_input_contents=[raw]), "unexpected inference output 'logits'"),
        # BYTES to the pixels-only view
        (pb.ModelInferRequest(
            model_name=f"{model_name}-pixels",
            inputs=[Tensor(name="images", datatype="BYTES", shape=[1],
                           contents=pb.InferTensorContents(bytes_contents=[b"x"]))]),
         f"encoded images go to {model_name!r}"),
    ]  # fmt: skip
    for request, expected in cases:
        error = _call(grpc_stub, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (expected, error.details())
        assert expected in error.details()


def test_too_many_images_is_invalid_argument(grpc_stub, model_name):
    n = 65  # SERVE_MAX_IMAGES_PER_REQUEST is 64
    error = _call(
        grpc_stub,
        pb.ModelInferRequest(
            model_name=model_name,
            inputs=[Tensor(name="pixels", datatype="UINT8", shape=[n, 32, 32, 3])],
            raw_input_contents=[b"\0" * (n * 32 * 32 * 3)],
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the limit is 64" in error.details() and _reason(error) == "too_many_images"


def test_the_server_keeps_serving_after_bad_calls(triton_grpc, model_name, pixels):
    tensor = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    assert triton_grpc.infer(model_name, [tensor]).as_numpy("probabilities").shape == (2, 10)


# -- the hardened server: tokens and a 1 MiB message limit -------------------------------------


def _pixels_call(server, metadata=(), n: int = 1):
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(
            model_name="resnet50",
            inputs=[Tensor(name="pixels", datatype="UINT8", shape=[n, 32, 32, 3])],
            raw_input_contents=[b"\0" * (n * 32 * 32 * 3)],
        )
        return stub.ModelInfer(request, metadata=metadata, timeout=30)


def test_a_token_is_required_when_tokens_are_configured(hardened_server):
    with pytest.raises(grpc.RpcError) as exc:
        _pixels_call(hardened_server)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        _pixels_call(hardened_server, [("authorization", "Bearer wrong")])
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert exc.value.details() == "the token is not valid"
    for metadata in (
        [("authorization", f"Bearer {HARDENED_TOKEN}")],
        [("x-api-key", "second-token")],
    ):
        assert _pixels_call(hardened_server, metadata).outputs[0].shape == [1, 10]


def test_health_needs_no_token(hardened_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(hardened_server.grpc) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_tritonclient_sends_the_token_as_metadata(hardened_server):
    client = grpcclient.InferenceServerClient(hardened_server.grpc)
    with pytest.raises(InferenceServerException) as exc:
        client.get_server_metadata()
    assert exc.value.status() == "StatusCode.UNAUTHENTICATED"
    headers = {"authorization": f"Bearer {HARDENED_TOKEN}"}
    assert client.get_server_metadata(headers=headers).name == "resnet-serve"
    client.close()


def test_a_message_over_the_limit_is_resource_exhausted(hardened_server):
    metadata = [("authorization", f"Bearer {HARDENED_TOKEN}")]
    n = 2 * 1024 * 1024 // (32 * 32 * 3)  # 2 MiB of pixels; the limit is 1 MiB
    with pytest.raises(grpc.RpcError) as exc:
        _pixels_call(hardened_server, metadata, n)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in exc.value.details()
    assert _pixels_call(hardened_server, metadata).outputs[0].shape == [1, 10]
