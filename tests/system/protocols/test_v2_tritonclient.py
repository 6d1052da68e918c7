"""KServe V2 through Triton's own HTTP client against the real server, checked against Keras."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

ATOL = 1e-5


def test_server_and_model_health(triton, model_name):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready(model_name)
    assert triton.is_model_ready(model_name, "1")
    assert not triton.is_model_ready("no-such-model")
    assert not triton.is_model_ready(model_name, "7")


def test_server_metadata_lists_the_extensions(triton):
    meta = triton.get_server_metadata()
    assert meta["name"] == "resnet-serve"
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])


def test_model_metadata_describes_the_inputs_at_the_model_size(triton, model_name):
    meta = triton.get_model_metadata(model_name)
    assert meta["name"] == model_name and meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "images", "datatype": "BYTES", "shape": [-1]},
        {"name": "pixels", "datatype": "FP32", "shape": [-1, 32, 32, 3]},
    ]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert triton.get_model_metadata(model_name, "1") == meta


def test_model_config_gives_batching_and_dims_without_the_batch(triton, model_name):
    config = triton.get_model_config(model_name)
    assert config["name"] == model_name
    assert config["max_batch_size"] >= 1
    dims = {t["name"]: t["dims"] for t in config["input"]}
    assert dims == {"images": [1], "pixels": [32, 32, 3]}
    assert config["output"][0]["dims"] == [10]


def _bytes_input(files: list[bytes], binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput("images", [len(files)], "BYTES")
    # Binary BYTES elements are the files; JSON cannot carry bytes, so there they are base64.
    values = files if binary else [base64.b64encode(f) for f in files]
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_bytes_images_match_keras(
    triton, model_name, images, decoded, reference, binary_in, binary_out
):
    result = triton.infer(
        model_name,
        [_bytes_input(images, binary_in)],
        outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=binary_out)],
    )
    got = result.as_numpy("probabilities")
    assert got.dtype == np.float32 and got.shape == (3, 10)
    np.testing.assert_allclose(got, reference(decoded(images)), atol=ATOL)
    has_binary = "binary_data_size" in (result.get_output("probabilities").get("parameters") or {})
    assert has_binary == binary_out


@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_pixel_tensors_skip_decoding_and_match_keras(
    triton, model_name, pixels, reference, datatype, binary
):
    tensor = httpclient.InferInput("pixels", list(pixels.shape), datatype)
    dtype = np.float32 if datatype == "FP32" else np.uint8
    tensor.set_data_from_numpy(pixels.astype(dtype), binary_data=binary)
    result = triton.infer(
        model_name,
        [tensor],
        outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=binary)],
    )
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(pixels), atol=ATOL)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension_returns_tritons_strings(
    triton, model_name, images, decoded, reference, binary
):
    result = triton.infer(
        model_name,
        [_bytes_input(images, True)],
        outputs=[httpclient.InferRequestedOutput("probabilities", binary, class_count=5)],
    )
    got = result.as_numpy("probabilities")
    assert got.shape == (3, 5)
    expected = reference(decoded(images))
    for row, probs in zip(got, expected, strict=True):
        # tritonclient gives bytes from binary data and str from JSON
        parsed = [(s.decode() if isinstance(s, bytes) else s).split(":") for s in row]
        assert [int(p[1]) for p in parsed] == list(np.argsort(-probs)[:5])
        assert [p[2] for p in parsed] == [f"class_{p[1]}" for p in parsed]
        scores = [float(p[0]) for p in parsed]
        np.testing.assert_allclose(scores, np.sort(probs)[::-1][:5], atol=2e-6)


def test_class_count_above_the_classes_gives_every_class(triton, model_name, pixels):
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = triton.infer(
        model_name,
        [tensor],
        outputs=[httpclient.InferRequestedOutput("probabilities", class_count=50)],
    )
    assert result.as_numpy("probabilities").shape == (2, 10)


def test_no_requested_outputs_means_all_outputs_in_binary(triton, model_name, pixels, reference):
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = triton.infer(model_name, [tensor], request_id="req-42")  # binary_data_output
    assert result.get_response()["id"] == "req-42"
    assert result.get_output("probabilities")["parameters"]["binary_data_size"] == 2 * 10 * 4
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(pixels), atol=ATOL)


def test_an_empty_outputs_list_means_all_outputs(server, model_name, pixels, reference):
    # "outputs" is optional; none requested returns all (Triton reads [] so, and a gRPC request
    # cannot tell [] from none). JSON encoders of that message write "outputs": [].
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape)}
    body = {"inputs": [{**tensor, "data": pixels.ravel().tolist()}], "outputs": []}
    r = httpx.post(f"{server.url}/v2/models/{model_name}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    (output,) = r.json()["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [2, 10]
    np.testing.assert_allclose(np.reshape(output["data"], (2, 10)), reference(pixels), atol=ATOL)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_versioned_infer_with_compressed_request(
    triton, model_name, images, decoded, reference, algorithm
):
    result = triton.infer(
        model_name,
        [_bytes_input(images[:1], True)],
        model_version="1",
        request_compression_algorithm=algorithm,
    )
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), reference(decoded(images[:1])), atol=ATOL
    )
