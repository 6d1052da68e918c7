"""The whole service with its model stage on JAX: the same answers as the TensorFlow server,
and /v1/models says which backend and device."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from tests.support.helpers import start_server, stop_server
from tests.support.protocols import noise_image


@pytest.fixture(scope="module")
def jax_server(tiny_model_file, tmp_path_factory):
    srv = start_server(
        {"SERVE_WEIGHTS": str(tiny_model_file), "SERVE_BACKEND": "jax"},
        tmp_path_factory.mktemp("jax") / "server.log",
    )
    yield srv
    stop_server(srv)


def _v2_probabilities(url: str, pixels: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": list(pixels.shape),
                "data": pixels.ravel().tolist(),
            }
        ]
    }
    r = httpx.post(url + "/v2/models/resnet50/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_the_jax_server_answers_as_the_tensorflow_server(server, jax_server):
    pixels = np.stack([noise_image(32, 32, seed=s) for s in range(3)])
    tf_probs = _v2_probabilities(server.url, pixels)
    jax_probs = _v2_probabilities(jax_server.url, pixels)
    np.testing.assert_allclose(jax_probs, tf_probs, rtol=0, atol=1e-5)
    image = base64.b64encode(open(__file__, "rb").read()[:10]).decode()  # not an image: 400
    r = httpx.post(jax_server.url + "/v1/classify", json={"images": [{"b64": image}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_an_image"


def test_models_metadata_names_the_backend_and_device(server, jax_server):
    (jax_model,) = httpx.get(jax_server.url + "/v1/models").json()["models"]
    (tf_model,) = httpx.get(server.url + "/v1/models").json()["models"]
    assert (jax_model["backend"], jax_model["device"]) == ("jax", "cpu:0")
    assert tf_model["backend"] == "tensorflow" and tf_model["device"].endswith("CPU:0")
