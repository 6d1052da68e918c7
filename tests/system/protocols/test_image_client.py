"""Triton's example image client, as it runs (its logic: tests/support/image_client.py), over
HTTP and gRPC against every model's pixels-only view, ``<model>-pixels``."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.image_client import Refused, classify
from tests.support.protocols import encoded, noise_image


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Files of other sizes than the model's: the client resizes them itself."""
    return [
        encoded(noise_image(48, 64, seed=21), "JPEG"),
        encoded(noise_image(40, 40, seed=22), "PNG"),
        encoded(noise_image(80, 60, seed=23), "JPEG"),
    ]


@pytest.mark.parametrize("protocol", ["http", "grpc", "grpc-streaming"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_the_example_client_classifies_with_the_pixels_view(
    server, model_name, photos, reference, protocol, batch_size
):
    url = server.url.removeprefix("http://") if protocol == "http" else server.grpc
    streaming = protocol == "grpc-streaming"
    batch, results = classify(
        url,
        protocol.removesuffix("-streaming"),
        f"{model_name}-pixels",
        photos,
        batch_size,
        3,
        streaming,
    )
    assert batch.shape == (batch_size, 32, 32, 3) and batch.dtype == np.float32
    expected = reference(batch.astype(np.uint8))
    assert len(results) == batch_size
    for top, probs in zip(results, expected, strict=True):
        assert [index for _, index, _ in top] == list(np.argsort(-probs)[:3])
        assert [label for _, _, label in top] == [f"class_{i}" for _, i, _ in top]
        np.testing.assert_allclose([s for s, _, _ in top], np.sort(probs)[::-1][:3], atol=2e-6)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_whole_model_is_refused_by_the_example_as_it_says(server, model_name, photos, protocol):
    # Why the view exists: the model also takes encoded images, a second input.
    url = server.url.removeprefix("http://") if protocol == "http" else server.grpc
    with pytest.raises(Refused, match="expecting 1 input, got 2"):
        classify(url, protocol, model_name, photos, 1, 1)


def test_the_pixels_view_over_http(triton, model_name):
    view = f"{model_name}-pixels"
    meta = triton.get_model_metadata(view)
    assert meta["name"] == view
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 32, 32, 3]}]
    config = triton.get_model_config(view)
    assert config["max_batch_size"] > 0
    assert config["input"] == [
        {
            "name": "pixels",
            "data_type": "TYPE_FP32",
            "format": "FORMAT_NHWC",
            "dims": [32, 32, 3],
            "optional": False,
        }
    ]
    assert triton.is_model_ready(view)
    assert not triton.is_model_ready("no-such-model-pixels")
