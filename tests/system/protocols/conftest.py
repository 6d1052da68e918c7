"""Fixtures of the protocol tests: Triton's client on the shared server, images, pixels, and
the reference answers they are checked against."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
import pytest

from service.model.normalize import normalize
from service.preprocess.decode import PreprocessConfig, decode
from tests.support.protocols import SIZE, encoded, noise_image


@pytest.fixture(scope="session")
def model_name(server) -> str:
    return httpx.get(server.url + "/v1/models").json()["models"][0]["name"]


@pytest.fixture(scope="session")
def triton(server):
    """Triton's own HTTP client, pointed at the shared real server."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    """Three encoded images of different formats and sizes."""
    return [
        encoded(noise_image(120, 160, seed=3), "JPEG"),
        encoded(noise_image(64, 48, seed=4), "PNG"),
        encoded(noise_image(32, 32, seed=5), "PNG"),
    ]


@pytest.fixture(scope="session")
def pixels() -> np.ndarray:
    """Two RGB images at the model's input size, uint8 [2, 32, 32, 3]."""
    return np.stack([noise_image(*SIZE, seed=6), noise_image(*SIZE, seed=7)])


@pytest.fixture(scope="session")
def reference(tiny_model_file) -> Callable[[np.ndarray], np.ndarray]:
    """Softmax of the model on uint8 pixels, straight through Keras (not the service's path)."""
    import keras

    model = keras.saving.load_model(tiny_model_file, compile=False)

    def probs(batch: np.ndarray) -> np.ndarray:
        logits = np.asarray(model(normalize(batch, "caffe"), training=False), dtype=np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return probs


@pytest.fixture(scope="session")
def decoded() -> Callable[[list[bytes]], np.ndarray]:
    """The pixels the model sees for these files: the service's decode at the tiny size."""

    def run(files: list[bytes]) -> np.ndarray:
        return np.stack([decode(data, PreprocessConfig(size=SIZE)).pixels for data in files])

    return run


@pytest.fixture(scope="session")
def triton_grpc(server):
    """Triton's own gRPC client, pointed at the shared real server."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc)
    yield client
    client.close()


@pytest.fixture(scope="session")
def grpc_stub(server):
    """The raw ``GRPCInferenceService`` stub of tritonclient's definitions, for messages its
    high-level client never sends (typed contents, malformed requests)."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.insecure_channel(server.grpc)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
