"""Bad KServe V2 input gets the protocol's ``{"error": "..."}`` and the right 4xx."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def v2_error(response: httpx.Response, status: int) -> str:
    """Assert the V2 error shape and status; return the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return body["error"]


def infer_url(server, model_name: str) -> str:
    return f"{server.url}/v2/models/{model_name}/infer"


def pixels_json(shape, data, datatype="UINT8", name="pixels") -> dict:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


def test_unknown_model_and_version_are_404(triton, model_name, pixels):
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    with pytest.raises(InferenceServerException) as exc:
        triton.infer("no-such-model", [tensor])
    assert exc.value.status() == "404" and "unknown model" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(model_name, [tensor], model_version="9")
    assert exc.value.status() == "404" and "unknown version" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        triton.get_model_metadata("no-such-model")
    assert exc.value.status() == "404"


@pytest.mark.parametrize(
    ("name", "datatype", "expected"),
    [
        ("pixels", "INT32", "expected 'FP32' or 'UINT8'"),
        ("pixels", "FP64", "expected 'FP32' or 'UINT8'"),
        ("images", "UINT8", "expected 'BYTES'"),
        ("INPUT__0", "UINT8", "unexpected inference input 'INPUT__0'"),
    ],
)
def test_wrong_datatype_or_input_name_is_400(triton, model_name, pixels, name, datatype, expected):
    tensor = httpclient.InferInput(name, list(pixels.shape), datatype)
    dtype = {"INT32": np.int32, "FP64": np.float64, "UINT8": np.uint8}[datatype]
    tensor.set_data_from_numpy(pixels.astype(dtype))
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(model_name, [tensor])
    assert exc.value.status() == "400"
    assert expected in exc.value.message()


def test_wrong_image_size_is_400(triton, model_name):
    tensor = httpclient.InferInput("pixels", [1, 16, 16, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(model_name, [tensor])
    assert exc.value.status() == "400" and "[N, 32, 32, 3]" in exc.value.message()


def test_unknown_output_name_is_400(triton, model_name, pixels):
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(model_name, [tensor], outputs=[httpclient.InferRequestedOutput("logits")])
    assert exc.value.status() == "400" and "unexpected inference output" in exc.value.message()


def test_shape_that_does_not_match_the_data_is_400(server, model_name, pixels):
    data = pixels[:1].ravel().tolist()  # one image's values for a two-image shape
    r = httpx.post(infer_url(server, model_name), json=pixels_json([2, 32, 32, 3], data))
    assert "needs 6144 values, got 3072" in v2_error(r, 400)
    files = [base64.b64encode(b"x").decode()] * 3
    body = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": files}]}
    r = httpx.post(infer_url(server, model_name), json=body)
    assert "needs 2 elements, got 3" in v2_error(r, 400)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "no 'inputs'"),
        ({"inputs": []}, "no 'inputs'"),
        ({"inputs": [{"datatype": "UINT8", "shape": [1], "data": [1]}]}, "missing its 'name'"),
        ({"inputs": [{"name": "pixels", "shape": [1], "data": [1]}]}, "missing its 'datatype'"),
        ({"inputs": [{"name": "pixels", "datatype": "UINT8", "data": [1]}]}, "'shape'"),
        ({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3]}]}, "'data'"),
        (
            {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["@@"]}]},
            "not valid base64",
        ),
        (pixels_json([1, 32, 32, 3], [300.0] * 3072, "FP32"), "0..255"),
        (pixels_json([1, 32, 32, 3], [0.5] * 3072, "UINT8"), "whole numbers"),
        (pixels_json([0, 32, 32, 3], []), "empty"),
        (
            {
                "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}],
                "outputs": [{"name": "probabilities", "parameters": {"classification": -1}}],
            },
            "classification",
        ),
    ],
    ids=[
        "no-inputs",
        "empty-inputs",
        "no-name",
        "no-datatype",
        "no-shape",
        "no-data",
        "bad-base64",
        "fp32-out-of-range",
        "uint8-fraction",
        "empty-batch",
        "negative-k",
    ],
)
def test_missing_or_malformed_fields_are_400(server, model_name, body, expected):
    r = httpx.post(infer_url(server, model_name), json=body)
    assert expected in v2_error(r, 400)


def test_bytes_that_are_not_an_image_are_400(server, model_name):
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(b"not an image").decode()],
            }
        ]
    }
    r = httpx.post(infer_url(server, model_name), json=body)
    assert "image 0" in v2_error(r, 400)


def _binary_request(tensor_bytes: bytes, declared: int) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": declared},
                }
            ]
        }
    ).encode()
    return header + tensor_bytes, len(header)


@pytest.mark.parametrize(
    ("header_length", "expected"),
    [
        ("abc", "not an integer"),
        ("-1", "outside the body"),
        ("100000", "outside the body"),
        ("5", "not valid JSON"),
    ],
)
def test_bad_inference_header_content_length_is_400(server, model_name, header_length, expected):
    element = struct.pack("<I", 3) + b"abc"
    body, _ = _binary_request(element, len(element))
    r = httpx.post(
        infer_url(server, model_name),
        content=body,
        headers={"Inference-Header-Content-Length": header_length},
    )
    assert expected in v2_error(r, 400)


def test_binary_data_size_that_does_not_match_the_body_is_400(server, model_name):
    element = struct.pack("<I", 3) + b"abc"
    body, length = _binary_request(element, len(element) + 4)
    r = httpx.post(
        infer_url(server, model_name),
        content=body,
        headers={"Inference-Header-Content-Length": str(length)},
    )
    assert "binary_data_size is 11 but 7 bytes" in v2_error(r, 400)
    body, length = _binary_request(struct.pack("<I", 99) + b"abc", 7)
    r = httpx.post(
        infer_url(server, model_name),
        content=body,
        headers={"Inference-Header-Content-Length": str(length)},
    )
    assert "runs past the data" in v2_error(r, 400)


def test_unknown_path_and_wrong_method_keep_the_v2_shape(server, model_name):
    assert "no route" in v2_error(httpx.get(server.url + "/v2/nothing/here"), 404)
    r = httpx.get(infer_url(server, model_name))
    v2_error(r, 405)
    assert r.headers["allow"] == "POST"  # RFC 9110: a 405 "MUST generate an Allow header"
    r = httpx.delete(f"{server.url}/v2/models/{model_name}/versions/1")
    assert "not allowed" in v2_error(r, 405) and r.headers["allow"] == "GET"
    v2_error(httpx.post(infer_url(server, model_name), content=b"{not json"), 400)


def test_while_loading_v2_health_says_not_ready_and_infer_is_503(make_client):
    from tests.support.tiny import tiny_loaded

    release = threading.Event()

    def slow_model():
        release.wait(60)
        return tiny_loaded()

    client = make_client(model_factory=slow_model, wait_ready=False)
    try:
        name = client.app.state.settings.model_name
        assert client.get("/v2/health/live").status_code == 200
        assert "loading" in v2_error(client.get("/v2/health/ready"), 400)
        v2_error(client.get(f"/v2/models/{name}/ready"), 400)
        r = client.post(f"/v2/models/{name}/infer", json=pixels_json([1, 32, 32, 3], [0] * 3072))
        assert "retry" in v2_error(r, 503) and r.headers["retry-after"]
        status = client.get(f"/v1/models/{name}").json()["model_version_status"][0]
        assert status["state"] == "LOADING"
    finally:
        release.set()
    deadline = time.monotonic() + 60
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get(f"/v1/models/{name}").json()["model_version_status"][0]["state"] == (
        "AVAILABLE"
    )


def test_triton_timeout_parameter_is_a_deadline(triton, model_name, pixels):
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(model_name, [tensor], timeout=1)  # microseconds
    assert exc.value.status() == "504" and "deadline" in exc.value.message()
    assert triton.infer(model_name, [tensor], timeout=30_000_000).as_numpy(
        "probabilities"
    ).shape == (
        2,
        10,
    )


def test_triton_timeout_zero_means_no_timeout(triton, triton_grpc, model_name, pixels):
    # tritonserver.h: the request timeout "default is 0 which indicates that the request has
    # no timeout"; tritonclient sends timeout=0 as is, over HTTP and over gRPC.
    import tritonclient.grpc as grpcclient

    for client, module in ((triton, httpclient), (triton_grpc, grpcclient)):
        tensor = module.InferInput("pixels", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        result = client.infer(model_name, [tensor], timeout=0)
        assert result.as_numpy("probabilities").shape == (2, 10)


def test_deadline_header_applies_to_tf_serving_predict(server, model_name, pixels):
    body = {"instances": pixels.tolist()}
    url = f"{server.url}/v1/models/{model_name}:predict"
    r = httpx.post(url, json=body, headers={"X-Request-Timeout-Ms": "0.001"})
    assert "deadline" in v2_error(r, 504)


def test_a_refused_token_keeps_the_protocols_error_shape(hardened_server, pixels):
    # Both protocols answer every error as {"error": "<message>"}; tritonclient raises the
    # value as the message, so an object there became its message. The native routes keep theirs.
    from tests.support.helpers import HARDENED_TOKEN

    client = httpclient.InferenceServerClient(hardened_server.url.removeprefix("http://"))
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("resnet50", [tensor])
    assert exc.value.status() == "401"
    assert isinstance(exc.value.message(), str) and "authentication required" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("resnet50", headers={"Authorization": "Bearer wrong"})
    assert exc.value.message() == "the token is not valid"
    answer = client.infer(
        "resnet50", [tensor], headers={"Authorization": f"Bearer {HARDENED_TOKEN}"}
    )
    assert answer.as_numpy("probabilities").shape == (2, 10)
    client.close()
    url = hardened_server.url
    for method, path in (
        ("GET", "/v2"),
        ("GET", "/v2/health/ready"),
        ("GET", "/v1/models/resnet50"),
        ("POST", "/v1/models/resnet50:predict"),
    ):
        r = httpx.request(method, url + path, json={"instances": [[[[0, 0, 0]]]]})
        assert "authentication required" in v2_error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + "/v1/models").json()["error"]["code"] == "unauthorized"
