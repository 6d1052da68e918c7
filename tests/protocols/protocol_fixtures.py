"""Fixtures shared by the protocol tests (imported by each test module).

Not a ``conftest.py``: a second ``conftest`` module would shadow ``tests/conftest.py`` for the
modules that import helpers from it by name.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from service.pipeline.preprocess import PreprocessConfig, decode, normalize

__all__ = ["decoded", "images", "model_name", "pixels", "reference", "triton"]

SIZE = (32, 32)  # the tiny model's input (tests/tiny.py)


def noise_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


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
