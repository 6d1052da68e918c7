"""TensorFlow Serving's documented REST bodies against the real server, checked against Keras."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

ATOL = 1e-5


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def predict(server, model_name, body, path=""):
    return httpx.post(f"{server.url}/v1/models/{model_name}{path}:predict", json=body, timeout=30)


def tf_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return body["error"]


def test_model_status_is_available(server, model_name):
    expected = {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert httpx.get(f"{server.url}/v1/models/{model_name}").json() == expected
    assert httpx.get(f"{server.url}/v1/models/{model_name}/versions/1").json() == expected


def test_native_model_list_stays_at_v1_models(server, model_name):
    body = httpx.get(f"{server.url}/v1/models").json()
    assert body["models"][0]["name"] == model_name
    assert body["models"][0]["input_shape"] == [32, 32, 3]


def test_metadata_declares_both_signatures(server, model_name):
    r = httpx.get(f"{server.url}/v1/models/{model_name}/metadata")
    assert r.status_code == 200
    body = r.json()
    assert body["model_spec"] == {"name": model_name, "signature_name": "", "version": "1"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "serving_pixels"}
    bytes_in = sigs["serving_default"]["inputs"]["image_bytes"]
    assert bytes_in["dtype"] == "DT_STRING"
    dims = sigs["serving_pixels"]["inputs"]["images"]["tensor_shape"]["dim"]
    assert [d["size"] for d in dims] == ["-1", "32", "32", "3"]
    out = sigs["serving_default"]["outputs"]["probabilities"]["tensor_shape"]["dim"]
    assert [d["size"] for d in out] == ["-1", "10"]
    assert httpx.get(f"{server.url}/v1/models/{model_name}/versions/1/metadata").json() == body


@pytest.mark.parametrize(
    ("make_body", "key"),
    [
        (lambda files: {"instances": [b64(f) for f in files]}, "predictions"),
        (lambda files: {"instances": [{"image_bytes": b64(f)} for f in files]}, "predictions"),
        (lambda files: {"inputs": [b64(f) for f in files]}, "outputs"),
        (lambda files: {"inputs": {"image_bytes": [b64(f) for f in files]}}, "outputs"),
        (
            lambda files: {
                "signature_name": "serving_default",
                "instances": [b64(f) for f in files],
            },
            "predictions",
        ),
    ],
    ids=["row", "row-named", "columnar", "columnar-named", "row-signature"],
)
def test_b64_images_match_keras(server, model_name, images, decoded, reference, make_body, key):
    r = predict(server, model_name, make_body(images))
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == [key]
    got = np.array(body[key])
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, reference(decoded(images)), atol=ATOL)


@pytest.mark.parametrize(
    ("make_body", "key"),
    [
        (lambda px: {"signature_name": "serving_pixels", "instances": px.tolist()}, "predictions"),
        (lambda px: {"instances": [{"images": p} for p in px.tolist()]}, "predictions"),
        (lambda px: {"inputs": {"images": px.astype(float).tolist()}}, "outputs"),
        (lambda px: {"inputs": px.tolist()}, "outputs"),
    ],
    ids=["row", "row-named", "columnar-named-float", "columnar"],
)
def test_pixel_arrays_match_keras(server, model_name, pixels, reference, make_body, key):
    r = predict(server, model_name, make_body(pixels), "/versions/1")
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()[key]), reference(pixels), atol=ATOL)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "Missing 'inputs' or 'instances' key"),
        ({"instances": [], "inputs": []}, "Not both"),
        ({"instances": {"b64": "eA=="}}, "list/array"),
        ({"instances": []}, "empty"),
        ({"instances": [{"b64": "@@@"}]}, "not valid base64"),
        ({"instances": ["plain text"]}, "expected an encoded image"),
        ({"instances": [{"pixels": {"b64": "eA=="}}]}, "has inputs ['pixels']"),
        ({"inputs": {"a": [], "b": []}}, "'inputs' names ['a', 'b']"),
        ({"signature_name": "classify", "instances": [{"b64": "eA=="}]}, "not found"),
        ({"instances": [[[[0, 0, 0]]]]}, "the model takes [32, 32, 3]"),
        ({"instances": [[[[0, 0, 0]] * 32] * 31 + [[[0, 0]] * 32]]}, "equally shaped"),
        ({"instances": [[[[256, 0, 0]] * 32] * 32]}, "0..255"),
        ({"instances": [{"b64": "eA=="}, [[[0, 0, 0]] * 32] * 32]}, "not both"),
        ({"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}, "image 0"),
    ],
    ids=[
        "no-key",
        "both-keys",
        "instances-not-list",
        "empty",
        "bad-base64",
        "plain-string",
        "unknown-input",
        "two-inputs",
        "unknown-signature",
        "wrong-size",
        "ragged",
        "out-of-range",
        "mixed-kinds",
        "not-an-image",
    ],
)
def test_bad_requests_get_tf_serving_errors(server, model_name, body, expected):
    assert expected in tf_error(predict(server, model_name, body), 400)


def test_unknown_model_or_version_is_404(server, model_name):
    body = {"instances": [{"b64": "eA=="}]}
    assert "Servable not found" in tf_error(predict(server, "nope", body), 404)
    assert "Servable not found" in tf_error(predict(server, model_name, body, "/versions/3"), 404)
    tf_error(httpx.get(f"{server.url}/v1/models/nope"), 404)
    tf_error(httpx.get(f"{server.url}/v1/models/{model_name}/versions/3/metadata"), 404)
    # TF Serving's version labels (/labels/{label}) are not served: a 404, in its error shape
    # ("In case of error, all APIs will return ... error as key"), as under every such path.
    r = predict(server, model_name, body, "/labels/stable")
    assert "no route" in tf_error(r, 404)
    assert "no route" in tf_error(httpx.get(f"{server.url}/v1/models/{model_name}/x/y"), 404)
    native = httpx.get(f"{server.url}/v1/nothing").json()  # the native paths keep theirs
    assert native["error"]["code"] == "not_found"


def test_not_json_and_other_methods_are_400(server, model_name):
    r = httpx.post(f"{server.url}/v1/models/{model_name}:predict", content=b"{oops")
    assert "JSON" in tf_error(r, 400)
    r = httpx.post(f"{server.url}/v1/models/{model_name}:classify", json={"examples": []})
    assert ":classify is not supported" in tf_error(r, 400)
